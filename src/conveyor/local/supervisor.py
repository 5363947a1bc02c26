"""Starting, watching and stopping the processes of `conveyor up`."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when `conveyor up` dies, even by
    SIGKILL, so no part is left running without it (and no second `up` starts beside one)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Supervisor:
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    stopping: bool = False

    def start(self, name: str, argv: list[str]) -> Child:
        # Own session: Ctrl-C reaches only `conveyor up`, which then stops children in order.
        process = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        child = Child(name=name, argv=argv, process=process)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def wait(self, poll_seconds: float = 0.5) -> Child | None:
        """Block until a stop is requested (None) or a child exits on its own (that child)."""
        while not self.stopping:
            exited = self.first_exited()
            if exited is not None:
                return exited
            time.sleep(poll_seconds)
        return None

    def stop(self, timeout: float = 20) -> None:
        """Stop children newest first (API before worker), then run the stop hooks."""
        self.stopping = True
        for child in reversed(self.children):
            process = child.process
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for hook in reversed(self.on_stop):
            hook()
        self.on_stop.clear()

    def request_stop(self, *_: object) -> None:
        self.stopping = True
