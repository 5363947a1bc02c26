"""The SSRF guard for async clients (crawls run many requests at once in one task).

As in `netguard`: the direct transport resolves a host once, refuses it if any address is
forbidden, and connects to those vetted addresses, so every redirect hop is checked. Through
a proxy the proxy resolves the name itself, so the name is vetted here first (a DNS answer
that changes in between, rebinding, is not caught there: proxies are the operator's own and
trusted, the target only by name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import httpcore
import httpx

from conveyor.core.netguard import NetPolicy, as_httpx_errors, default_ssl_context


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class AsyncGuardedBackend(httpcore.AnyIOBackend):
    """Connects only to addresses the policy allows."""

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            if _is_ip_literal(host):  # nothing to resolve: no thread needed
                addresses = self.policy.vet_host(host, port)
            else:
                addresses = await anyio.to_thread.run_sync(self.policy.vet_host, host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure


class _AsyncResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


def _proxy_pool(proxy_url: str, limits: httpx.Limits) -> httpcore.AsyncHTTPProxy:
    parts = urlsplit(proxy_url)
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return httpcore.AsyncHTTPProxy(
        proxy_url=httpcore.URL(scheme=parts.scheme.encode(), host=host.encode(), port=port),
        proxy_auth=auth,
        ssl_context=default_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
    )


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """An async httpx transport that cannot reach forbidden addresses, direct or through
    `proxy_url` (an http:// or https:// forward proxy; credentials in the URL)."""

    def __init__(
        self,
        policy: NetPolicy | None = None,
        *,
        proxy_url: str | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.policy = policy or NetPolicy.from_settings()
        self.proxied = proxy_url is not None
        # A crawl talks to many sites at once: keep a connection to each alive.
        limits = limits or httpx.Limits(max_connections=200, max_keepalive_connections=200)
        self._pool: httpcore.AsyncConnectionPool | httpcore.AsyncHTTPProxy
        if proxy_url is not None:
            self._pool = _proxy_pool(proxy_url, limits)
        else:
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=default_ssl_context(),
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=AsyncGuardedBackend(self.policy),
            )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        self.policy.check_scheme(url)
        if self.proxied:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                if _is_ip_literal(url.host):
                    self.policy.vet_host(url.host, port)
                else:
                    await anyio.to_thread.run_sync(self.policy.vet_host, url.host, port)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {url.host}: {exc}") from exc
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_AsyncResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
