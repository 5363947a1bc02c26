"""A TCP relay that adds a fixed one-way delay in each direction: a network link in a box.

Loopback has almost no round-trip time, so on it a protocol's chattiness costs nothing;
a real provider is a few milliseconds (same region) to a hundred (another continent) away.
Bytes keep their order; each chunk is delivered `delay` seconds after it was read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    delivering = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    await delivering


async def _relay(target_port: int, listen_port: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pump(client_r, server_w, delay),
            _pump(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def serve_delayed(target_port: int, listen_port: int, round_trip: float, ready: Any) -> None:
    """Run in a process of its own: relay listen_port → target_port with `round_trip` RTT."""

    async def main() -> None:
        task = asyncio.create_task(_relay(target_port, listen_port, round_trip / 2))
        await asyncio.sleep(0.2)
        ready.set()
        await task

    asyncio.run(main())
