"""Hosts of their own on one machine: a network namespace and a host name per process, and a
TCP relay that lets them reach the services on the root namespace's loopback.

A host's only link is a veth pair to the root namespace, in a /30 of a private /24 chosen per
run; its processes reach Redis and PostgreSQL through a relay listening on the root end of
that pair. Nothing leaves loopback or the namespaces made here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

# The second octet of every subnet made here; the third comes from the process id.
PRIVATE_PREFIX = "10.213"
# A relay refuses connections beyond this: a runaway client cannot exhaust the test's files.
MAX_RELAYED_CONNECTIONS = 256


@dataclass(frozen=True)
class Host:
    """A machine of its own: a network namespace reached over a veth pair, and a host name."""

    name: str
    netns: str
    veth: str  # the root namespace's end of the pair
    gateway: str  # the root end's address: where this host's relays listen
    address: str  # the address inside the namespace

    def run(self, argv: list[str]) -> list[str]:
        """argv in this host's network namespace, under its host name (a UTS namespace)."""
        script = 'hostname "$0" && exec "$@"'
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--uts", "--", "sh", "-c", script, self.name, *argv,
        ]  # fmt: skip


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def isolation_unavailable() -> str | None:
    """Why hosts cannot be made here, in one line; None when they can."""
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` to give each worker a host and network of its own"
    probe = f"cvprobe{os.getpid()}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {_first_line(added.stderr)}"
    try:
        # Both ends inside the probe namespace, so deleting it removes them.
        pair = ("name", "probe0", "type", "veth", "peer", "name", "probe1")
        veth = _ip("-n", probe, "link", "add", *pair, check=False)
        if veth.returncode != 0:
            return f"cannot make a veth pair: {_first_line(veth.stderr)}"
        uts = subprocess.run(
            ["unshare", "--uts", "--", "sh", "-c", "hostname probe"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if uts.returncode != 0:
            return f"`unshare --uts` is not permitted here: {_first_line(uts.stderr)}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no reason given"])[0]


def _free_subnet() -> str:
    """A /24 under PRIVATE_PREFIX no interface uses, starting from one the pid picks."""
    used = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    start = os.getpid() % 250
    for offset in range(250):
        subnet = f"{PRIVATE_PREFIX}.{(start + offset) % 250 + 1}"
        if f"{subnet}." not in used:
            return subnet
    raise RuntimeError(f"every {PRIVATE_PREFIX}.X.0/24 is in use")


@contextmanager
def private_hosts(names: list[str]) -> Iterator[list[Host]]:
    """One namespace per name, each on a veth pair to the root namespace; all removed after."""
    tag = os.getpid()
    subnet = _free_subnet()
    hosts: list[Host] = []
    try:
        for index, name in enumerate(names):
            host = Host(
                name=name,
                netns=f"conveyor-{tag}-{name}",
                veth=f"cv{tag}{index}r"[:15],
                gateway=f"{subnet}.{4 * index + 1}",
                address=f"{subnet}.{4 * index + 2}",
            )
            hosts.append(host)
            inside = f"cv{tag}{index}n"[:15]
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.netns)
            _ip("addr", "add", f"{host.gateway}/30", "dev", host.veth)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", inside)
            _ip("-n", host.netns, "link", "set", inside, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts:
            # Deleting the namespace destroys the inner end, which takes the pair with it.
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)


@dataclass
class Relay:
    """Plain TCP forwarding from listening addresses to targets, on an event loop of its own
    in a thread; `relay.accepted[(host, port)]` counts the connections each listener took."""

    accepted: dict[tuple[str, int], int] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def forward(self, listen_host: str, target: tuple[str, int]) -> int:
        """Listen on listen_host (a free port) and forward to target; returns the port."""
        future = asyncio.run_coroutine_threadsafe(self._listen(listen_host, target), self._loop)
        return future.result(timeout=10)

    async def _listen(self, host: str, target: tuple[str, int]) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(reader, writer, target, listen)

        server = await asyncio.start_server(handle, host, 0)
        port = int(server.sockets[0].getsockname()[1])
        listen = (host, port)
        self.accepted[listen] = 0
        self._servers.append(server)
        return port

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        target: tuple[str, int],
        listen: tuple[str, int],
    ) -> None:
        if len(self._open) >= MAX_RELAYED_CONNECTIONS:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), timeout=5
            )
        except (OSError, TimeoutError):
            client_writer.close()
            return
        self.accepted[listen] += 1
        self._open.update((client_writer, server_writer))
        try:
            await asyncio.gather(
                _pipe(client_reader, server_writer), _pipe(server_reader, client_writer)
            )
        finally:
            self._open.difference_update((client_writer, server_writer))

    def stop(self) -> None:
        """Close the listeners and every relayed connection, then end the loop's thread."""
        if self._thread is not None:
            with suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._open):
            writer.close()
        # Whatever still runs (a connection being opened) ends here, not at loop.close().
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), timeout=5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until either side ends; then end both, as a dead peer would."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass  # a reset: the other direction ends too
    finally:
        writer.close()


@contextmanager
def relay() -> Iterator[Relay]:
    made = Relay()
    made.start()
    try:
        yield made
    finally:
        made.stop()
