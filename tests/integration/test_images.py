"""The image pipeline end to end: a real API, a real worker, Redis and the database."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from conveyor.core.settings import get_settings, section
from conveyor.workloads.images.settings import ImagesSettings
from tests.integration import images_samples as samples
from tests.integration.conftest import (
    Process,
    Stack,
    extra_api,
    free_port,
    wait_for,
)

SIZES = {"thumbnail": (200, 200), "medium": (800, 600), "large": (1200, 900)}
PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis)


def _owner(stack: Stack, prefix: str) -> tuple[str, httpx.Client]:
    owner = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return owner, stack.client(stack.key_for(owner))


def _upload(
    client: httpx.Client,
    data: bytes,
    filename: str = "photo.jpg",
    content_type: str = "image/jpeg",
    **form: str,
) -> httpx.Response:
    return client.post(
        "/api/v1/images", files={"file": (filename, data, content_type)}, data=form or None
    )


def _accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def _image(client: httpx.Client, image_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/images/{image_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _variant_progress(image: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in image["variant_progress"]}


def test_upright_variants_without_gps_in_every_format(stack: Stack) -> None:
    owner, client = _owner(stack, "img-exif")
    with client:
        accepted = _accepted(_upload(client, samples.rotated_jpeg_with_gps()))
        job = stack.wait_job(accepted["job_id"], {"succeeded", "failed", "dead"}, timeout=90)
        assert job["state"] == "succeeded", job
        assert job["progress"]["current"] == job["progress"]["total"] == 3
        assert job["progress"]["message"] == "3 of 3 variants done"

        image = _image(client, accepted["id"])
        assert image["status"] == "processed"
        assert (image["width"], image["height"]) == (1200, 900)  # as shown, not as stored
        assert len(image["variants"]) == 9
        for variant in image["variants"]:
            response = client.get(variant["url"])
            assert response.status_code == 200, variant
            assert response.headers["content-type"] == f"image/{variant['format']}"
            picture = Image.open(io.BytesIO(response.content))
            assert picture.format == PIL_FORMATS[variant["format"]]
            assert picture.size == SIZES[variant["name"]] == (variant["width"], variant["height"])
            picture.load()  # decodes to the end
            # Upright: red on top, blue below, as in the scene, not on its side.
            assert samples.is_red(samples.colour_at(picture, 0.5, 0.1)), variant
            assert samples.is_blue(samples.colour_at(picture, 0.5, 0.9)), variant
            exif = picture.getexif()
            assert samples.GPS_IFD not in exif, variant
            assert not exif.get_ifd(samples.GPS_IFD), variant
            assert b"Conveyor Test Camera" not in response.content

        manifest = image["manifest"]
        assert set(manifest["variants"]) == {"thumbnail", "medium", "large"}
        # The square crop has another aspect ratio: it stays out of srcset.
        assert manifest["srcset"]["webp"].endswith("large.webp 1200w")
        assert "medium.webp 800w" in manifest["srcset"]["webp"]
        assert "thumbnail" not in manifest["srcset"]["avif"]

        # Another owner sees nothing of it.
        with stack.client(stack.key_for(f"{owner}-other")) as stranger:
            assert stranger.get(f"/api/v1/images/{accepted['id']}").status_code == 404
            assert stranger.get(image["variants"][0]["url"]).status_code == 404


def test_progress_is_streamed_per_variant(stack: Stack) -> None:
    owner, client = _owner(stack, "img-sse")
    _redis().set(f"test:images:slow:{owner}:large", "1.5")
    with client:
        accepted = _accepted(_upload(client, samples.jpeg()))
        watch = subprocess.Popen(
            [sys.executable, "-c", "from conveyor.cli import main; main()", "jobs", "watch",
             accepted["job_id"], "--interval", "0.2"],
            env={**stack.env, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        events: list[dict[str, Any]] = []
        with client.stream("GET", f"/api/v1/jobs/{accepted['job_id']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
        output, _ = watch.communicate(timeout=60)
    assert watch.returncode == 0, output
    assert "3 of 3 variants done" in output
    assert events[-1]["state"] == "succeeded"
    progress = [(e["progress"]["current"], e["progress"]["total"]) for e in events]
    assert progress[-1] == (3, 3)
    # `large` is held back, so the stream shows the chord part-way through.
    assert any(current in (1, 2) and total == 3 for current, total in progress), progress


def test_permanent_failure_keeps_the_others_and_retry_completes(stack: Stack) -> None:
    owner, client = _owner(stack, "img-partial")
    flags = _redis()
    flags.set(f"test:images:fail:{owner}:large", "1")
    flags.set(f"test:images:flaky:{owner}:medium", "1")
    with client:
        accepted = _accepted(_upload(client, samples.jpeg()))
        job = stack.wait_job(accepted["job_id"], {"succeeded", "failed"}, timeout=90)
        assert job["state"] == "failed"
        assert "1 of 3 variants failed" in job["error"]["message"]

        image = _image(client, accepted["id"])
        assert image["status"] == "partially_processed"
        progress = _variant_progress(image)
        assert progress["large"]["status"] == "failed"
        assert "test asked large to fail" in progress["large"]["error"]
        assert progress["thumbnail"]["status"] == "done"
        # The transient failure was retried in its own task; the others ran once.
        assert (progress["medium"]["status"], progress["medium"]["attempts"]) == ("done", 2)
        assert progress["thumbnail"]["attempts"] == 1
        kept = [v for v in image["variants"] if v["name"] != "large"]
        assert all(client.get(v["url"]).status_code == 200 for v in kept)
        assert all(v["url"] is None for v in image["variants"] if v["name"] == "large")

        letters = stack.client().get("/api/v1/dead-letters", params={"limit": 200}).json()
        letter = next(i for i in letters["items"] if i["job_id"] == progress["large"]["job_id"])
        assert letter["task_name"] == "conveyor.workloads.images.variant"

        assert (
            client.post(f"/api/v1/images/{accepted['id']}/variants/medium/retry").status_code == 409
        )
        flags.delete(f"test:images:fail:{owner}:large")
        retried = _accepted(client.post(f"/api/v1/images/{accepted['id']}/variants/large/retry"))
        assert retried["job_id"] != accepted["job_id"]
        job = stack.wait_job(retried["job_id"], {"succeeded", "failed"}, timeout=90)
        assert job["state"] == "succeeded", job

        image = _image(client, accepted["id"])
        assert image["status"] == "processed"
        assert image["job_id"] == retried["job_id"]
        progress = _variant_progress(image)
        assert progress["large"]["attempts"] == 2
        assert progress["thumbnail"]["attempts"] == 1
        large = [v for v in image["variants"] if v["name"] == "large"]
        assert {v["format"] for v in large} == {"jpeg", "webp", "avif"}
        assert all(client.get(v["url"]).status_code == 200 for v in large)
        assert client.post(f"/api/v1/images/{accepted['id']}/retry").status_code == 409


@pytest.mark.one_database
def test_a_worker_killed_mid_variant_is_redone(stack: Stack) -> None:
    owner, client = _owner(stack, "img-kill")
    flags = _redis()
    flags.set(f"test:images:slow:{owner}:medium", "120")
    with client:
        accepted = _accepted(_upload(client, samples.jpeg()))
        wait_for(lambda: flags.get(f"test:images:started:{owner}:medium"), 60, "medium to start")
        stack.worker.kill_hard()
        flags.delete(f"test:images:slow:{owner}:medium")
        with stack.quick_redelivery_worker():
            job = stack.wait_job(accepted["job_id"], {"succeeded", "failed"}, timeout=120)
        assert job["state"] == "succeeded", job
        image = _image(client, accepted["id"])
        assert image["status"] == "processed"
        progress = _variant_progress(image)
        assert progress["medium"]["attempts"] == 2
        medium = [v for v in image["variants"] if v["name"] == "medium"]
        assert all(client.get(v["url"]).status_code == 200 for v in medium)


BAD_UPLOADS = [
    pytest.param(samples.png_bomb(), "bomb.png", "image/png", 422, "100000x100000", id="bomb"),
    pytest.param(samples.truncated_jpeg(), "cut.jpg", "image/jpeg", 422, "truncated", id="cut"),
    # The probe's file: 12000x4000 declared in a few hundred bytes, closed by an end marker.
    pytest.param(
        samples.jpeg_declaring(12_000, 4_000),
        "big.jpg",
        "image/jpeg",
        422,
        "premature end of data segment",
        id="declares-more-than-it-has",
    ),
    pytest.param(samples.png(), "photo.jpg", "image/jpeg", 422, "content is PNG", id="renamed"),
    pytest.param(samples.SVG, "logo.png", "image/png", 415, "SVG document", id="svg"),
    pytest.param(samples.HTML, "cat.jpg", "image/jpeg", 415, "HTML document", id="html"),
    pytest.param(b"", "empty.jpg", "image/jpeg", 422, "empty", id="empty"),
]


@pytest.mark.parametrize(("data", "filename", "content_type", "code", "message"), BAD_UPLOADS)
def test_bad_uploads_are_refused_before_any_worker(
    stack: Stack, data: bytes, filename: str, content_type: str, code: int, message: str
) -> None:
    _, client = _owner(stack, "img-bad")
    worker_pid = stack.worker.process.pid if stack.worker.process else None
    with client:
        response = _upload(client, data, filename, content_type)
        assert response.status_code == code, response.text
        detail = response.json()["detail"]
        assert detail.startswith("file: ")
        assert message in detail
        jobs = client.get("/api/v1/jobs").json()["items"]
        assert jobs == []  # nothing was queued for this owner
    assert stack.worker.process is not None
    assert stack.worker.process.pid == worker_pid
    assert stack.worker.process.poll() is None
    wait_for(stack.worker_answers, 20, "the worker to answer", interval=0.5)


def test_oversized_uploads_and_bad_fields_get_clear_errors(stack: Stack) -> None:
    _, client = _owner(stack, "img-fields")
    limit = section(ImagesSettings).image_max_upload_bytes
    with client:
        # Past the body limit: refused before the body is read.
        too_big = _upload(client, b"\xff\xd8\xff" + b"\x00" * (limit + 100_000))
        assert too_big.status_code == 413, too_big.text
        # Within the framing allowance but over the file limit: refused by the upload check.
        over = _upload(client, b"\xff\xd8\xff" + b"\x00" * (limit + 10))
        assert over.status_code == 413
        assert over.json()["detail"].startswith("file: ")

        unknown = _upload(client, samples.jpeg(), preset="poster")
        assert unknown.status_code == 422
        assert unknown.json()["detail"].startswith("preset: unknown preset 'poster'")
        neither = client.post("/api/v1/images", data={"preset": "default"})
        assert neither.status_code == 422
        assert "exactly one of" in neither.json()["detail"]
        assert client.get(f"/api/v1/images/{uuid.uuid4().hex}").status_code == 404


HOSTILE_NAMES = [
    (b"../../../etc/cron.d/evil.jpg", "evil.jpg"),
    (b"..\\..\\Windows\\win.jpg", "win.jpg"),
    (b"shell.php\x00.jpg", "shell.php.jpg"),
    (b"\x1b[2Jbell\x07.jpg", "[2Jbell.jpg"),
    ("photo\u202egnp.jpg".encode(), "photognp.jpg"),
    (b"a" * 3000 + b".jpg", "a" * 124 + ".jpg"),
]


def test_upload_names_are_stored_and_echoed_as_safe_display_names(stack: Stack) -> None:
    _, client = _owner(stack, "img-names")
    boundary = "conveyor-names"
    with client:
        for raw, expected in HOSTILE_NAMES:
            # Built by hand: an HTTP client would escape the very bytes under test.
            body = (
                f"--{boundary}\r\n".encode()
                + b'Content-Disposition: form-data; name="file"; filename="'
                + raw
                + b'"\r\nContent-Type: image/jpeg\r\n\r\n'
                + samples.jpeg(64, 48)
                + f"\r\n--{boundary}--\r\n".encode()
            )
            response = client.post(
                "/api/v1/images",
                content=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            accepted = _accepted(response)
            assert _image(client, accepted["id"])["filename"] == expected
        stack.wait_job(accepted["job_id"], {"succeeded"}, timeout=90)


def test_an_idempotent_upload_replays_despite_a_new_multipart_boundary(stack: Stack) -> None:
    _, client = _owner(stack, "img-idem")
    data = samples.jpeg(320, 240)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with client:
        files = {"file": ("a.jpg", data, "image/jpeg")}
        first = client.post("/api/v1/images", files=files, headers=key)
        second = client.post("/api/v1/images", files=files, headers=key)
        assert first.status_code == second.status_code == 202
        assert first.json() == second.json()
        assert second.headers.get("Idempotent-Replayed") == "true"
        other = {"file": ("a.jpg", samples.jpeg(330, 240), "image/jpeg")}
        assert client.post("/api/v1/images", files=other, headers=key).status_code == 422
        stack.wait_job(first.json()["job_id"], {"succeeded"}, timeout=90)


class ImageServer:
    """A plain HTTP server on loopback: a JPEG, a redirect to it, and `/slow`, which sends
    a byte every 0.2 s for ever, so no single read ever times out."""

    def __init__(self) -> None:
        self.body = samples.jpeg(640, 480)
        # `/later.jpg` is a 404 until this is set.
        self.later_ready = False
        self.lock = threading.Lock()
        self.slow_in_flight = 0
        # (start, end) of each slow request, as the server saw it.
        self.slow_spans: list[tuple[float, float]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/photo.jpg")
                    self.end_headers()
                elif self.path.startswith("/slow"):
                    server.trickle(self)
                elif self.path == "/later.jpg" and not server.later_ready:
                    self.send_error(404)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(server.body)))
                    self.end_headers()
                    self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def trickle(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        with self.lock:
            self.slow_in_flight += 1
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", str(len(self.body)))
            handler.end_headers()
            for byte in self.body[:300]:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up: what the deadline is for
        finally:
            with self.lock:
                self.slow_in_flight -= 1
                self.slow_spans.append((started, time.monotonic()))

    @property
    def slow_seconds(self) -> list[float]:
        return [end - start for start, end in self.slow_spans]

    def most_overlap(self) -> float:
        """The longest time two slow requests were both open."""
        spans = sorted(self.slow_spans)
        return max(
            (min(a[1], b[1]) - b[0] for i, a in enumerate(spans) for b in spans[i + 1 :]),
            default=0.0,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    try:
        yield server
    finally:
        server.close()


FETCH_DEADLINE = 2.0
# Loopback is private: the API and the worker must both be allowed to reach it.
FETCH_ENV = {
    "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",
    "CONVEYOR_IMAGE_FETCH_TIMEOUT_SECONDS": str(FETCH_DEADLINE),
}


@pytest.fixture(scope="class")
def fetching_api(stack: Stack) -> Iterator[str]:
    """The URL of an API, served with a worker, that may fetch images from loopback; the
    stack's usual worker again after the class."""
    usual = stack.env
    stack.worker.stop()
    stack.env = {**usual, **FETCH_ENV}
    try:
        stack.start_worker()
        with extra_api(stack, "images-fetch", **FETCH_ENV) as base_url:
            yield base_url
    finally:
        stack.env = usual
        stack.worker.stop()
        stack.start_worker()


def _client_of(stack: Stack, base_url: str, prefix: str) -> tuple[str, httpx.Client]:
    owner = f"{prefix}-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {stack.key_for(owner)}"}
    return owner, httpx.Client(base_url=base_url, headers=headers, timeout=30)


@pytest.mark.one_database  # fetching, the SSRF guard, deadlines, a Redis lock per owner
class TestImagesFromUrls:
    """Images fetched from URLs, on one worker and API allowed to reach loopback for all the
    class (started once: `fetching_api`). Not about the ledger: dead-letter replay runs on
    both databases in test_replaying_a_failed_variants_dead_letter_completes_the_image."""

    def test_url_uploads_go_through_the_ssrf_guard(
        self, stack: Stack, image_server: ImageServer, fetching_api: str
    ) -> None:
        _, client = _owner(stack, "img-url")
        with client:
            refused = client.post("/api/v1/images", data={"url": f"{image_server.url}/photo.jpg"})
            assert refused.status_code == 422
            assert refused.json()["detail"].startswith("url: refused 127.0.0.1")
        _, private = _client_of(stack, fetching_api, "img-url")
        with private:
            moved = f"{image_server.url}/moved"
            accepted = _accepted(private.post("/api/v1/images", data={"url": moved}))
            assert accepted["status"] == "fetching"
            stack.wait_job(accepted["job_id"], {"succeeded"}, timeout=90)
            image = _image(private, accepted["id"])
            assert (image["status"], image["width"], image["height"]) == ("processed", 640, 480)
            assert (image["filename"], image["source_url"]) == ("photo.jpg", moved)

    def test_a_url_that_fails_leaves_the_image_failed_and_replaying_its_dead_letter_completes_it(
        self, stack: Stack, image_server: ImageServer, fetching_api: str
    ) -> None:
        _, client = _client_of(stack, fetching_api, "img-later")
        with client, stack.client() as admin:
            url = f"{image_server.url}/later.jpg"
            accepted = _accepted(client.post("/api/v1/images", data={"url": url}))
            stack.wait_job(accepted["job_id"], {"failed"}, timeout=60)
            image = _image(client, accepted["id"])
            assert (image["status"], image["error"]) == (
                "failed",
                "fetch failed: url: the server answered 404",
            )
            letters = admin.get("/api/v1/dead-letters", params={"limit": 200}).json()["items"]
            letter = next(
                item
                for item in letters
                if item["task_name"] == "conveyor.workloads.images.fetch"
                and item["kwargs"].get("image_id") == accepted["id"]
            )
            assert letter["attempts"] == 1  # a 404 is not worth another try
            image_server.later_ready = True
            replay = admin.post(f"/api/v1/dead-letters/{letter['id']}/replay")
            assert replay.status_code in (200, 201, 202), replay.text

            def processed() -> dict[str, Any] | None:
                found = _image(client, accepted["id"])
                return found if found["status"] == "processed" else None

            done = wait_for(processed, 90, "the replayed image to be processed")
            assert (done["width"], done["height"], done["filename"]) == (640, 480, "later.jpg")

    def test_a_slow_url_holds_no_api_thread_and_fails_its_image_at_the_deadline(
        self, stack: Stack, image_server: ImageServer, fetching_api: str
    ) -> None:
        _, client = _client_of(stack, fetching_api, "img-slow")
        with client, stack.client() as admin:
            started = time.monotonic()
            response = client.post("/api/v1/images", data={"url": f"{image_server.url}/slow"})
            assert time.monotonic() - started < 1.0  # answered at once: a worker fetches
            accepted = _accepted(response)
            assert accepted["status"] == "fetching"
            stack.wait_job(accepted["job_id"], {"failed"}, timeout=90)
            image = _image(client, accepted["id"])
            assert image["status"] == "failed"
            assert f"did not send the image within {FETCH_DEADLINE:g} s" in image["error"]
            assert all(v["status"] == "failed" for v in image["variant_progress"])
            letters = admin.get("/api/v1/dead-letters", params={"limit": 200}).json()["items"]
            letter = next(
                item
                for item in letters
                if item["task_name"] == "conveyor.workloads.images.fetch"
                and item["kwargs"].get("image_id") == accepted["id"]
            )
            assert "did not send the image within" in letter["error"]["message"]
            assert letter["attempts"] == 3  # two retries: a slow server may recover
        # A byte every 0.2 s never trips a per-read timeout; the whole-fetch deadline cut each
        # attempt off (plus a little for the server to notice the closed connection).
        wait_for(lambda: len(image_server.slow_spans) == 3, 5, "the server to see 3 attempts end")
        assert max(image_server.slow_seconds) < FETCH_DEADLINE + 1.0

    def test_one_owners_slow_urls_never_hold_up_another_owner(
        self, stack: Stack, image_server: ImageServer, fetching_api: str
    ) -> None:
        _, greedy = _client_of(stack, fetching_api, "img-greedy")
        _, other = _client_of(stack, fetching_api, "img-other")
        with greedy, other:

            def send_slow(n: int) -> float:
                started = time.monotonic()
                url = f"{image_server.url}/slow?n={n}"
                _accepted(greedy.post("/api/v1/images", data={"url": url}))
                return time.monotonic() - started

            with ThreadPoolExecutor(12) as pool:
                waits = list(pool.map(send_slow, range(12)))
            assert max(waits) < 5.0, waits  # 12 at once, none held by a fetch
            wait_for(lambda: image_server.slow_in_flight, 20, "a slow fetch to start")

            started = time.monotonic()
            response = other.post("/api/v1/images", data={"url": f"{image_server.url}/photo.jpg"})
            assert time.monotonic() - started < 1.0
            accepted = _accepted(response)
            stack.wait_job(accepted["job_id"], {"succeeded"}, timeout=60)
            assert _image(other, accepted["id"])["status"] == "processed"
            done_after = time.monotonic() - started
            # The greedy owner's fetches ran one at a time (the server notices a closed
            # connection at its next write, 0.2 s on), and are far from done.
            assert image_server.most_overlap() < 0.5, image_server.slow_spans
            assert len(image_server.slow_spans) < 12, done_after


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with a bucket, and the settings that point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "CONVEYOR_STORAGE_BACKEND": "s3",
        "CONVEYOR_S3_BUCKET": "conveyor-images",
        "CONVEYOR_S3_PREFIX": "test",
        "CONVEYOR_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "CONVEYOR_S3_REGION": "us-east-1",
        "CONVEYOR_S3_ACCESS_KEY_ID": "testing",
        "CONVEYOR_S3_SECRET_ACCESS_KEY": "testing",
    }
    boto3.client(
        "s3",
        endpoint_url=env["CONVEYOR_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="conveyor-images")
    try:
        yield env
    finally:
        server.stop()


@pytest.mark.one_database
def test_variants_stored_in_s3_are_served_by_presigned_urls(
    stack: Stack, s3_env: dict[str, str]
) -> None:
    owner = f"img-s3-{uuid.uuid4().hex[:8]}"
    key = stack.key_for(owner)
    # This run's worker stores in S3; the stack's own worker steps aside meanwhile.
    stack.worker.stop()
    worker = Process(
        "worker-s3",
        [
            sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q", "images",
            "-c", "2", "-n", f"s3-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
            "--without-mingle",
        ],
        {**stack.env, **s3_env},
        stack.tmp / "worker-s3.log",
    )  # fmt: skip
    worker.start()
    try:
        wait_for(stack.worker_answers, 30, "the S3 worker to answer", interval=0.5)
        with (
            extra_api(stack, "images-s3", **s3_env) as base_url,
            httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client,
        ):
            accepted = _accepted(_upload(client, samples.rotated_jpeg_with_gps(600, 450)))
            job = stack.wait_job(accepted["job_id"], {"succeeded", "failed"}, timeout=90)
            assert job["state"] == "succeeded", worker.log_tail()
            image = _image(client, accepted["id"])
            assert len(image["variants"]) == 9
            for variant in image["variants"]:
                url = variant["url"]
                assert url.startswith(s3_env["CONVEYOR_S3_ENDPOINT_URL"] + "/conveyor-images/test/")
                assert "X-Amz-Signature=" in url
                picture = Image.open(io.BytesIO(httpx.get(url).raise_for_status().content))
                picture.load()
                assert picture.size == (variant["width"], variant["height"])
            served = client.get(f"/api/v1/images/{accepted['id']}/variants/medium.webp")
            assert served.status_code == 307
            assert served.headers["location"].startswith(s3_env["CONVEYOR_S3_ENDPOINT_URL"])
    finally:
        worker.stop()
        stack.start_worker()


def test_replaying_a_failed_variants_dead_letter_completes_the_image(stack: Stack) -> None:
    owner, client = _owner(stack, "img-replay")
    flags = _redis()
    flags.set(f"test:images:fail:{owner}:thumbnail", "1")
    with client, stack.client() as admin:
        accepted = _accepted(_upload(client, samples.jpeg(400, 300)))
        stack.wait_job(accepted["job_id"], {"failed"}, timeout=90)
        failed = _variant_progress(_image(client, accepted["id"]))["thumbnail"]
        letters = admin.get("/api/v1/dead-letters", params={"limit": 200}).json()["items"]
        letter = next(item for item in letters if item["job_id"] == failed["job_id"])
        flags.delete(f"test:images:fail:{owner}:thumbnail")
        replay = admin.post(f"/api/v1/dead-letters/{letter['id']}/replay")
        assert replay.status_code in (200, 201, 202), replay.text
        stack.wait_job(replay.json()["job_id"], {"succeeded"}, timeout=60)
        image = _image(client, accepted["id"])
        assert image["status"] == "processed"
        assert "thumbnail" in image["manifest"]["variants"]
