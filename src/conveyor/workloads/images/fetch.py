"""Fetching an image by URL through the SSRF guard, with the upload size cap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import httpx

from conveyor.core.netguard import BlockedDestination, InvalidUrl, NetPolicy, guarded_client
from conveyor.workloads.images.validation import RejectedImage


@dataclass(frozen=True)
class Fetched:
    data: bytes
    filename: str | None
    content_type: str | None


def fetch_image(
    url: str, *, max_bytes: int, timeout: float, policy: NetPolicy | None = None
) -> Fetched:
    """The body at `url`, streamed and cut off past `max_bytes` (413); every hop of a
    redirect is checked by the guard. Problems are RejectedImage naming the `url` field."""
    policy = policy or NetPolicy.from_settings()
    try:
        policy.check_url(url)
        with (
            guarded_client(policy, timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url, headers={"Accept": "image/*"}) as response,
        ):
            if response.status_code != 200:
                raise RejectedImage(422, f"url: the server answered {response.status_code}")
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
            name = PurePosixPath(response.url.path).name or None
            return Fetched(b"".join(chunks), name, response.headers.get("content-type"))
    except (BlockedDestination, InvalidUrl) as exc:
        raise RejectedImage(422, f"url: {exc}") from None
    except httpx.HTTPError as exc:
        raise RejectedImage(422, f"url: could not fetch it ({type(exc).__name__}: {exc})") from None


def _too_large(max_bytes: int) -> RejectedImage:
    return RejectedImage(413, f"url: the image is larger than the limit of {max_bytes} bytes")
