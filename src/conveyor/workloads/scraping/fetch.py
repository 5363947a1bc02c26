"""One HTTP request of a crawl: a whole-request deadline, a body size cap, and the text
decoded by the charset the page declares (header, then <meta>), else a detected one."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from email.message import Message

import anyio
import charset_normalizer
import httpx

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
HTML_TYPES = ("text/html", "application/xhtml+xml")


class Late(Exception):
    """The request would have left after its `not_after` time: it was not sent."""


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit:,} bytes (CONVEYOR_SCRAPE_MAX_BODY_BYTES)")


@dataclass(frozen=True)
class Response:
    status: int
    url: str
    headers: httpx.Headers
    body: bytes
    elapsed: float
    proxied: bool = field(default=False)

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";", 1)[0].strip().lower()

    @property
    def is_html(self) -> bool:
        return self.content_type in HTML_TYPES or (
            not self.content_type and self.body.lstrip()[:15].lower().startswith(b"<!doctype html")
        )

    def location(self) -> str | None:
        return self.headers.get("location") if self.status in REDIRECTS else None

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))

    def text(self) -> str:
        return decode(self.body, self.headers.get("content-type"))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _charset_of(content_type: str | None) -> str | None:
    if not content_type:
        return None
    message = Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    return charset if isinstance(charset, str) else None


def decode(body: bytes, content_type: str | None) -> str:
    """The page's text: the declared charset (header, then <meta>), else detected, else UTF-8."""
    declared = _charset_of(content_type)
    if declared is None:
        match = _META_CHARSET.search(body[:4096])
        declared = match.group(1).decode("ascii", "replace") if match else None
    if declared:
        try:
            return body.decode(declared, errors="replace")
        except LookupError:
            pass  # a charset Python does not know: detect instead
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        best = charset_normalizer.from_bytes(body[:65536]).best()
        return body.decode(best.encoding if best else "utf-8", errors="replace")


async def get(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str],
    max_bytes: int,
    timeout: float,
    proxied: bool = False,
    not_after: float | None = None,
) -> Response:
    """GET `url` without following redirects; TooLarge past `max_bytes`, httpx errors, or
    httpx.ReadTimeout when the whole request takes longer than `timeout`. With `not_after`
    (time.monotonic()), Late instead of sending the request any later than that."""

    async def trace(event: str, info: dict[str, object]) -> None:
        # The last moment before the request's first byte is written.
        if event.endswith("send_request_headers.started") and time.monotonic() > (
            not_after or float("inf")
        ):
            raise Late()

    started = time.monotonic()
    extensions = {"trace": trace} if not_after is not None else {}
    try:
        with anyio.fail_after(timeout):
            async with client.stream(
                "GET", url, headers=headers, extensions=extensions
            ) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise TooLarge(max_bytes)
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(max_bytes)
                    chunks.append(chunk)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {timeout:g}s") from None
    return Response(
        response.status_code,
        str(response.url),
        response.headers,
        b"".join(chunks),
        time.monotonic() - started,
        proxied,
    )
