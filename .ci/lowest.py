"""The lowest-versions job: every direct dependency at its lower bound, then the unit tests and
a `conveyor up` smoke test, so the bounds in pyproject.toml are ones that run.

    .venv/bin/python .ci/lowest.py [more pytest arguments for the unit tests]

The venv (.venv-lowest) is reused while pyproject.toml is unchanged. `conveyor up` uses the
test Redis (CONVEYOR_TEST_REDIS_HOST/PORT/DB, the database the integration suite owns and
flushes) and SQLite in a temporary data directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-lowest"
PYTHON = VENV / "bin" / "python"
INSTALL_TIMEOUT = 600
UNIT_TIMEOUT = 600
UP_TIMEOUT = 120
KEY = "cvk_0123456789ab_lowest-versions-smoke-secret-00000000000000"


def say(message: str) -> None:
    print(f"lowest: {message}", flush=True)


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    say("$ " + " ".join(str(part) for part in argv))
    subprocess.run(argv, cwd=ROOT, env=env, timeout=timeout, check=True)


def uv() -> str:
    found = Path(sys.executable).parent / "uv"
    if not found.exists():
        run([sys.executable, "-m", "pip", "install", "--quiet", "uv"], INSTALL_TIMEOUT)
    return str(found)


def install() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    if stamp.exists():
        say(f"{VENV.name} is up to date with pyproject.toml")
        return
    started = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)
    # The main venv's interpreter, so both jobs test one Python version.
    run([uv(), "venv", "--quiet", "--python", sys.executable, str(VENV)], INSTALL_TIMEOUT)
    run(
        [
            uv(), "pip", "install", "--quiet", "--python", str(PYTHON),
            "--resolution", "lowest-direct", "-e", ".[all,dev]",
        ],
        INSTALL_TIMEOUT,
    )  # fmt: skip
    stamp.touch()
    say(f"installed in {time.monotonic() - started:.0f}s")


def installed_versions() -> None:
    names = ["celery", "kombu", "redis", "fastapi", "starlette", "sqlalchemy", "typer", "pydantic"]
    script = (
        "from importlib.metadata import version\n"
        f"print(', '.join(f'{{n}} {{version(n)}}' for n in {names!r}))"
    )
    output = subprocess.run(
        [str(PYTHON), "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    say(f"installed: {output.stdout.strip()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], bool], seconds: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if process.poll() is not None:
            raise SystemExit(f"lowest: conveyor up exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"lowest: no {what} within {seconds:g}s")
        time.sleep(0.3)


@contextmanager
def started_up() -> Iterator[tuple[subprocess.Popen[bytes], Path, str] | None]:
    """`conveyor up` on the test Redis, started now so that it boots while the unit tests run;
    stopped (and the Redis database emptied) on the way out."""
    host = os.environ.get("CONVEYOR_TEST_REDIS_HOST", "127.0.0.1")
    port = os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379")
    redis_url = f"redis://{host}:{port}/{os.environ.get('CONVEYOR_TEST_REDIS_DB', '13')}"
    try:
        redis.Redis.from_url(redis_url, socket_timeout=2).ping()
    except redis.RedisError:
        say(f"skipping the conveyor up smoke test: no Redis at {redis_url}")
        yield None
        return
    redis.Redis.from_url(redis_url).flushdb()
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="conveyor-lowest-") as tmp:
        env.update(
            {
                "CONVEYOR_DATA_DIR": str(Path(tmp) / "data"),
                "CONVEYOR_REDIS_URL": redis_url,
                "CONVEYOR_API_PORT": str(api_port),
                "CONVEYOR_BOOTSTRAP_API_KEY": KEY,
                "CONVEYOR_WORKER_CONCURRENCY": "1",
                "CONVEYOR_LOG_JSON": "false",
            }
        )
        log_path = Path(tmp) / "up.log"
        say(f"starting conveyor up (Redis {redis_url}, SQLite in {tmp}), log in {log_path}")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(VENV / "bin" / "conveyor"), "up"],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                yield process, log_path, f"http://127.0.0.1:{api_port}"
            except SystemExit:
                print(log_path.read_text(errors="replace")[-4000:], flush=True)
                raise
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                redis.Redis.from_url(redis_url).flushdb()


def smoke(process: subprocess.Popen[bytes], log_path: Path, base: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}

    def banner() -> bool:
        return "Conveyor is up" in log_path.read_text(errors="replace")

    wait_for("banner", banner, UP_TIMEOUT, process)
    text = log_path.read_text(errors="replace")
    print(text[text.rfind("\n", 0, text.index("Conveyor is up")) + 1 :], end="", flush=True)
    ready = httpx.get(f"{base}/health/ready", timeout=10)
    if ready.status_code != 200:
        raise SystemExit(f"lowest: /health/ready answered {ready.status_code}: {ready.text}")
    response = httpx.post(
        f"{base}/api/v1/diagnostics/jobs",
        json={"steps": 2, "step_seconds": 0.1},
        headers=headers,
        timeout=10,
    )
    if response.status_code != 202:
        raise SystemExit(
            f"lowest: diagnostics job refused ({response.status_code}): {response.text}"
        )
    job = f"{base}/api/v1/jobs/{response.json()['job_id']}"

    def succeeded() -> bool:
        state = httpx.get(job, headers=headers, timeout=10).json()["state"]
        if state in {"failed", "cancelled", "dead"}:
            raise SystemExit(f"lowest: the diagnostics job ended {state}")
        return bool(state == "succeeded")

    wait_for("succeeded diagnostics job", succeeded, 60, process)
    process.send_signal(signal.SIGINT)
    code = process.wait(60)
    if code != 0:
        raise SystemExit(f"lowest: conveyor up exited {code} after Ctrl-C")
    say("conveyor up: banner, /health/ready 200, diagnostics job succeeded, Ctrl-C exit 0")


def main(pytest_args: list[str]) -> None:
    started = time.monotonic()
    install()
    installed_versions()
    with started_up() as up:
        run(
            [
                str(PYTHON),
                "-m",
                "pytest",
                "tests/unit",
                "-q",
                "-p",
                "no:cacheprovider",
                # On every core (pytest-xdist, at its lower bound too): all of the unit tests,
                # so every module that uses a bounded library is imported and run.
                "-n",
                "logical",
                *pytest_args,
            ],
            UNIT_TIMEOUT,
        )
        if up is not None:
            smoke(*up)
    say(f"passed in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"lowest: failed (exit {exc.returncode}): {exc.cmd[0]}") from None
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"lowest: timed out after {exc.timeout:g}s: {exc.cmd[0]}") from None
