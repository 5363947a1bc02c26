"""Fetching an image by URL through the SSRF guard, with the upload size cap and one
deadline for the whole fetch.

httpx's timeouts apply to each connect, read and write: a server that sends a byte every
few seconds never trips them. Here every socket operation gets the time left until one
deadline, so no fetch outlives it, whatever the server does.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import httpcore
import httpx

from conveyor.core.errors import TransientError
from conveyor.core.filenames import display_name
from conveyor.core.netguard import (
    BlockedDestination,
    GuardedBackend,
    InvalidUrl,
    NetPolicy,
    guarded_client,
)
from conveyor.workloads.images.validation import RejectedImage


@dataclass(frozen=True)
class Fetched:
    data: bytes
    filename: str | None
    content_type: str | None


class FetchUnavailable(TransientError):
    """The server did not answer in time, or answered with an error it may get over."""


def check_url(url: str, policy: NetPolicy | None = None) -> None:
    """Refuse, before anything is queued, a URL that could never be fetched (422)."""
    try:
        (policy or NetPolicy.from_settings()).check_url(url)
    except (BlockedDestination, InvalidUrl) as exc:
        raise RejectedImage(422, f"url: {exc}") from None


def fetch_image(
    url: str, *, max_bytes: int, deadline: float, policy: NetPolicy | None = None
) -> Fetched:
    """The body at `url` within `deadline` seconds, streamed and cut off past `max_bytes`
    (413); every hop of a redirect is checked by the guard. A problem another try cannot
    fix is RejectedImage naming the `url` field; one it may fix is FetchUnavailable."""
    policy = policy or NetPolicy.from_settings()
    check_url(url, policy)
    backend = DeadlineBackend(policy, time.monotonic() + deadline)
    try:
        with (
            guarded_client(
                policy, backend=backend, timeout=deadline, follow_redirects=True
            ) as client,
            client.stream("GET", url, headers={"Accept": "image/*"}) as response,
        ):
            _check_status(response.status_code)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes)
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
            # httpx gives the path decoded; the last segment is the server's name for it.
            name = display_name(PurePosixPath(response.url.path).name)
            return Fetched(b"".join(chunks), name, response.headers.get("content-type"))
    except (BlockedDestination, InvalidUrl) as exc:
        raise RejectedImage(422, f"url: {exc}") from None
    except httpx.TimeoutException:
        raise FetchUnavailable(
            f"url: the server did not send the image within {deadline:g} s"
        ) from None
    except httpx.NetworkError as exc:
        # Refused, reset, unreachable: often over in a moment.
        raise FetchUnavailable(f"url: could not fetch it ({type(exc).__name__}: {exc})") from None
    except httpx.HTTPError as exc:
        raise RejectedImage(422, f"url: could not fetch it ({type(exc).__name__}: {exc})") from None


def _check_status(code: int) -> None:
    if code == 200:
        return
    if code >= 500 or code in (408, 429):
        raise FetchUnavailable(f"url: the server answered {code}")
    raise RejectedImage(422, f"url: the server answered {code}")


def _too_large(max_bytes: int) -> RejectedImage:
    return RejectedImage(413, f"url: the image is larger than the limit of {max_bytes} bytes")


class DeadlineBackend(GuardedBackend):
    """The guard's backend, with every socket operation bounded by the time left."""

    def __init__(self, policy: NetPolicy, ends: float) -> None:
        super().__init__(policy)
        self.ends = ends

    def open(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        limit = _left(self.ends, timeout, httpcore.ConnectTimeout)
        stream = super().open(address, port, limit, local_address, socket_options)
        return _DeadlineStream(stream, self.ends)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, ends: float) -> None:
        self._stream = stream
        self._ends = ends

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(self._ends, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(self._ends, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit = _left(self._ends, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, limit), self._ends
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _left(ends: float, timeout: float | None, error: type[Exception]) -> float:
    """The operation's own timeout, cut to the time left; `error` once none is left."""
    left = ends - time.monotonic()
    if left <= 0:
        raise error("the deadline for the whole fetch has passed")
    return left if timeout is None else min(timeout, left)
