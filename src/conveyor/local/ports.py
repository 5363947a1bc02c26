"""Choosing the ports `conveyor up` listens on: a setting pins a port, a default gives way."""

from __future__ import annotations

import socket
import time

from conveyor.core.settings import SettingsError


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As the servers themselves bind: connections in TIME_WAIT do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def choose_port(setting: str, host: str, port: int, *, pinned: bool) -> int:
    """`port` if it is free; another free one if only the default asked for it; else one line
    naming the setting."""
    if port_free(host, port):
        return port
    if pinned:
        raise SettingsError(
            f"port {port} on {host} is already in use ({setting}={port}); stop what listens "
            f"there, or set {setting} to a free port"
        )
    return any_free_port(host)


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(host, port):
            return True
        time.sleep(0.1)
    return False
