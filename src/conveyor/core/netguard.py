"""The SSRF guard for outgoing HTTP: webhooks, fetching URLs, scraping.

A URL a user gave us must not reach the machines around us: loopback, private networks,
link-local addresses (cloud metadata at 169.254.169.254) and the like. Checking the URL's
host name is not enough, since any name can resolve to 127.0.0.1, and checking a resolution
and then letting the HTTP client resolve again is not enough either (DNS rebinding: the
second answer differs). So the check lives where the socket is opened: `GuardedBackend`
resolves the host once, refuses if *any* address is forbidden, and connects to the vetted
addresses themselves. Every connection goes through it, so every redirect hop is checked
too, whatever follows the redirects.

`CONVEYOR_ALLOW_PRIVATE_NETWORKS=true` lifts the address checks for development, except for
cloud metadata endpoints, which stay refused: nothing legitimate posts webhooks there.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import structlog

from conveyor.core.errors import PermanentError
from conveyor.core.settings import Settings, get_settings

log = structlog.get_logger("conveyor.netguard")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
HINT = "set CONVEYOR_ALLOW_PRIVATE_NETWORKS=true to allow private networks"


class BlockedDestination(PermanentError):
    """An outgoing request refused by the SSRF guard. Permanent: retrying cannot fix a URL."""

    def __init__(self, host: str, reason: str, address: str | None = None) -> None:
        self.host = host
        self.reason = reason
        self.address = address
        where = host if address is None or address == host else f"{host} ({address})"
        super().__init__(f"refused {where}: {reason}")


class InvalidUrl(ValueError):
    """A URL that is not an absolute http(s) URL with a host."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64_PREFIX or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: str | IPAddress, *, allow_private: bool = False) -> str | None:
    """Why connecting to `address` is refused, or None when it is a public address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if ip in METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            problem = address_problem(inner, allow_private=allow_private)
            return f"IPv6 address embedding {inner}, a {problem}" if problem else None
    if allow_private:
        return None
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_multicast, "multicast address"),
        (ip in SHARED_ADDRESS_SPACE, "carrier-grade NAT address (100.64.0.0/10)"),
        (ip.is_reserved, "reserved address"),
        (ip.is_private, "private network address"),
        (not ip.is_global, "address that is not publicly routable"),
    )
    return next((reason for failed, reason in checks if failed), None)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class NetPolicy:
    """What outgoing connections may reach. `resolver` is injectable for tests."""

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> NetPolicy:
        return cls(allow_private=(settings or get_settings()).allow_private_networks)

    def _refuse(self, host: str, reason: str, address: str | None = None) -> BlockedDestination:
        log.warning("netguard.refused", host=host, address=address, reason=reason)
        hint = "" if self.allow_private or reason == "cloud metadata endpoint" else f"; {HINT}"
        return BlockedDestination(host, reason + hint, address)

    def vet_host(self, host: str, port: int) -> list[str]:
        """Resolve `host` and return its addresses; BlockedDestination if any is forbidden.

        Raises OSError (socket.gaierror) when the name does not resolve.
        """
        name = host.strip("[]").rstrip(".").lower()
        literal = _ip_literal(name)
        if literal is not None:
            addresses = [str(literal)]
        else:
            if name in METADATA_HOSTNAMES:
                raise self._refuse(host, "cloud metadata endpoint")
            if not self.allow_private and (name == "localhost" or name.endswith(".localhost")):
                raise self._refuse(host, "loopback host name")
            addresses = self.resolver(name, port)
            if not addresses:
                raise socket.gaierror(f"{host} resolved to no address")
        for address in addresses:
            problem = address_problem(address, allow_private=self.allow_private)
            if problem:
                raise self._refuse(host, problem, address)
        return addresses

    def check_scheme(self, url: httpx.URL) -> None:
        if url.scheme not in ALLOWED_SCHEMES:
            raise self._refuse(url.host or str(url), f"scheme {url.scheme!r} is not http or https")

    def check_url(self, url: str | httpx.URL) -> list[str]:
        """Check a URL before using it (e.g. when a user registers it).

        Returns the vetted addresses, or [] when the host does not resolve (yet): that is
        not a reason to refuse a URL, and every connection is checked again anyway.
        """
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else url
        except httpx.InvalidURL as exc:
            raise InvalidUrl(f"not a valid URL: {exc}") from None
        if not parsed.scheme:
            raise InvalidUrl("must be an absolute URL such as https://example.com/hooks")
        self.check_scheme(parsed)
        if not parsed.host:
            raise InvalidUrl("has no host; expected a URL such as https://example.com/hooks")
        try:
            return self.vet_host(
                parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
            )
        except OSError:
            return []


class GuardedBackend(httpcore.SyncBackend):
    """A network backend that connects only to addresses the policy allows."""

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.vet_host(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception | None = None
        # Connect to the addresses just checked, never to a fresh resolution of `host`.
        for address in addresses:
            try:
                return self.open(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def open(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        """Open the socket to a vetted address (tests override this to reroute)."""
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


# httpcore's errors as httpx's, most specific first, so callers catch the usual classes.
HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in HTTPCORE_ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes milliseconds; one verifying context serves every client.
    return httpx.create_ssl_context()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport whose every connection goes through `GuardedBackend`.

    No proxy support on purpose: a proxy would connect on our behalf, past the guard.
    """

    def __init__(
        self,
        policy: NetPolicy | None = None,
        *,
        backend: GuardedBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.policy = policy or NetPolicy.from_settings()
        limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=5)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or default_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend or GuardedBackend(self.policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_scheme(request.url)
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with as_httpx_errors():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def guarded_client(
    policy: NetPolicy | None = None,
    *,
    backend: GuardedBackend | None = None,
    timeout: float = 10.0,
    follow_redirects: bool = False,
    max_redirects: int = 5,
    **kwargs: Any,
) -> httpx.Client:
    """An httpx.Client that cannot reach private addresses (unless the policy allows it).

    With follow_redirects=True every hop is checked again, since each one connects anew
    through the guard; a hop to a forbidden address raises BlockedDestination.
    """
    return httpx.Client(
        transport=GuardedTransport(policy, backend=backend),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,  # no proxies from the environment: see GuardedTransport
        **kwargs,
    )
