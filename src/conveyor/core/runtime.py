"""The runtime file: where a running `conveyor up` listens, for every other process to find.

`conveyor up` holds an exclusive lock on `<data dir>/up.lock` for as long as it runs and,
once every part listens, writes `<data dir>/runtime.json`. A runtime file whose lock nobody
holds was left by a crash: it is stale and ignored. The lock, not a pid, decides, so a
reused pid never makes a dead system look alive.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

RUNTIME_FILE = "runtime.json"
LOCK_FILE = "up.lock"


@dataclass(frozen=True)
class Runtime:
    """What a running `conveyor up` started and where it listens."""

    pid: int
    started_at: str
    data_dir: str
    redis_url: str
    database_url: str
    api_url: str
    smtp: str
    # Other servers `up` started for a workload (a sandbox), by a name the workload reads.
    urls: dict[str, str] = field(default_factory=dict)


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, runtime: Runtime | None) -> None:
        self.pid = pid
        self.runtime = runtime
        where = f", API at {runtime.api_url}" if runtime else ", still starting"
        super().__init__(f"pid {pid or '?'}{where}")


def _lock_is_held(path: Path) -> bool:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def read(data_dir: Path) -> Runtime | None:
    """The runtime of the system running from data_dir, or None (nothing runs, or it crashed)."""
    path = data_dir / RUNTIME_FILE
    if not path.exists() or not _lock_is_held(data_dir / LOCK_FILE):
        return None
    try:
        fields = json.loads(path.read_text())
        return Runtime(**fields)
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class UpLock:
    """Held by `conveyor up` from start to stop; released by the OS if the process dies."""

    data_dir: Path
    handle: IO[str]

    @classmethod
    def acquire(cls, data_dir: Path) -> UpLock:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = (data_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise AlreadyRunning(int(text) if text.isdigit() else None, read(data_dir)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        # A runtime file here is a crashed run's: nothing it names is listening any more.
        (data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        return cls(data_dir=data_dir, handle=handle)

    def publish(self, runtime: Runtime) -> None:
        """Write the runtime file atomically, readable by this user only (it holds URLs)."""
        path = self.data_dir / RUNTIME_FILE
        partial = path.with_suffix(".tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(asdict(runtime), out, indent=2)
        partial.replace(path)

    def release(self) -> None:
        (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        self.handle.close()
