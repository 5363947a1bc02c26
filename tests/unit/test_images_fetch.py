"""Fetching an image by URL: one deadline for the whole fetch, the size cap, and which
failures another attempt may fix. Against a real HTTP server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conveyor.core.netguard import NetPolicy
from conveyor.workloads.images.fetch import FetchUnavailable, check_url, fetch_image
from conveyor.workloads.images.validation import RejectedImage

BODY = b"\xff\xd8\xff" + b"\x00" * 2000
LOOPBACK = NetPolicy(allow_private=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/trickle":
            # A byte every 0.1 s: no single read waits long, the whole takes 200 s.
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            try:
                for byte in BODY:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        code = {"/missing": 404, "/down": 503, "/busy": 429}.get(self.path, 200)
        self.send_response(code)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_trickling_server_is_cut_off_at_the_deadline(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchUnavailable, match=r"did not send the image within 0\.6 s"):
        fetch_image(f"{server}/trickle", max_bytes=10_000, deadline=0.6, policy=LOOPBACK)
    assert time.monotonic() - started < 1.0


def test_the_body_is_fetched_within_the_deadline(server: str) -> None:
    url = f"{server}/albums/my%20cat%00.jpg"
    fetched = fetch_image(url, max_bytes=10_000, deadline=5, policy=LOOPBACK)
    # The name comes from the URL's last segment, decoded, as a safe display name.
    assert (fetched.data, fetched.filename) == (BODY, "my cat.jpg")


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("/missing", RejectedImage, "the server answered 404"),
        ("/down", FetchUnavailable, "the server answered 503"),
        ("/busy", FetchUnavailable, "the server answered 429"),
    ],
)
def test_answers_are_permanent_or_worth_another_try(
    server: str, path: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        fetch_image(f"{server}{path}", max_bytes=10_000, deadline=5, policy=LOOPBACK)


def test_a_body_over_the_limit_is_413(server: str) -> None:
    with pytest.raises(RejectedImage) as caught:
        fetch_image(f"{server}/big", max_bytes=100, deadline=5, policy=LOOPBACK)
    assert caught.value.status == 413


def test_private_addresses_are_refused_before_anything_is_queued() -> None:
    with pytest.raises(RejectedImage, match=r"url: refused 127\.0\.0\.1"):
        check_url("http://127.0.0.1:9/photo.jpg", NetPolicy())
    with pytest.raises(RejectedImage, match="url: "):
        check_url("ftp://example.com/photo.jpg", NetPolicy())
