"""Test infrastructure for the scraping workload: a deterministic multi-host web site and
real HTTP proxies, all on loopback.

`TestSite` serves three hosts (127.0.0.2-4, one port) with a tree of pages, robots.txt and
misbehaving special pages, and records every request. `Proxies` runs real `proxy.py`
processes; `BanningProxy` answers every proxied request with 403.

What the site sees through proxy.py (v2.4.10): requests in origin form from 127.0.0.1, other
headers unchanged, no `Forwarded` or `X-Forwarded-For`. Only the first request on each client
connection gets `Via: 1.1 proxy.py v2.4.10`; later ones on the same keep-alive connection are
piped upstream as they are, without it. So `Via` shows a proxy was used, its absence does not
show that none was.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HUGE_BYTES = 20 * 1024 * 1024
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"

# The special pages, and the early page (1, 2 or 3) of every host that links to each.
SPECIAL_LINKS: dict[int, tuple[str, ...]] = {
    1: ("/slow", "/error", "/flaky", "/busy"),
    2: ("/unavailable", "/loop-a", "/moved", "/huge"),
    3: ("/gone", "/dup-1", "/dup-2", "/latin1", "/etag"),
}
SPECIAL_PATHS = frozenset(p for paths in SPECIAL_LINKS.values() for p in paths) | {"/loop-b"}
REDIRECTS = {"/loop-a": "/loop-b", "/loop-b": "/loop-a", "/moved": "/page/5"}
# Pages answering with a body that yields no item.
NO_ITEM = frozenset({"/robots.txt", "/error", "/gone", "/huge", "/loop-a", "/loop-b"})
IGNORED_LINKS = ("mailto:owner@example.com", "javascript:void(0)")


@dataclass(frozen=True)
class RequestLog:
    arrived: float  # time.monotonic() when the request line and headers were read
    wall: float  # time.time() at the same moment
    answered: float  # time.monotonic() when the status line went out
    host: str  # "127.0.0.2:PORT": the server that got it, whatever the Host header said
    path: str  # without the query
    target: str  # path and query as requested
    method: str
    status: int
    user_agent: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    via: str | None = None
    forwarded: str | None = None


@dataclass
class _Response:
    status: int
    body: bytes | Iterator[bytes] = b""  # an iterator is sent chunked
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def normalise_url(url: str) -> str:
    """The obvious normalisation: no fragment, no utm_* parameters, lower-case scheme and host."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if not k.lower().startswith("utm_")]
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(query), "")
    )


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of `times` inside any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def price(host_index: int, page: int) -> str:
    return f"{(host_index * 37 + page * 13) % 90 + 10}.{(page * 7 + host_index) % 100:02d}"


def tags(host_index: int, page: int) -> list[str]:
    return [f"tag-{page % 5}", f"host-{host_index}"]


def _html(
    title: str, price_text: str = "0.00", links: Sequence[str] = (), tag_names: Sequence[str] = ()
) -> str:
    items = "".join(f'<li><a href="{href}">{href}</a></li>\n' for href in links)
    tag_html = "".join(f'<a class="tag">{t}</a>' for t in tag_names)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f'<body><h1>{title}</h1><span class="price">{price_text}</span>\n'
        f"<p>{tag_html}</p>\n<ul>\n{items}</ul></body></html>\n"
    )


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive handler threads wait for their client; closing must not wait for them.
    block_on_close = False

    def __init__(self, site: TestSite, index: int, address: tuple[str, int]) -> None:
        self.site = site
        self.index = index
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]

    @property
    def host(self) -> str:
        return f"{self.server_address[0]!s}:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is normal
            super().handle_error(request, client_address)


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and delayed ACKs add
        # ~40 ms to every response on a keep-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Handler(_QuietHandler):
    server: _HostServer

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        arrived, wall = time.monotonic(), time.time()
        site, target = self.server.site, self.path
        if "://" in target:  # absolute form, as a proxy would be asked
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path = urlsplit(target).path
        if site.latency:
            time.sleep(site.latency)
        response = site._respond(self.server.index, path, self.headers)
        site._record(
            RequestLog(
                arrived=arrived,
                wall=wall,
                answered=time.monotonic(),
                host=self.server.host,
                path=path,
                target=target,
                method=self.command,
                status=response.status,
                user_agent=self.headers.get("User-Agent"),
                if_none_match=self.headers.get("If-None-Match"),
                if_modified_since=self.headers.get("If-Modified-Since"),
                via=self.headers.get("Via"),
                forwarded=self.headers.get("Forwarded"),
            )
        )
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status == 304:
            self.end_headers()
            return
        self.send_header("Content-Type", response.content_type)
        body = response.body
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for chunk in body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionError:
            self.close_connection = True


class TestSite:
    """Three hosts serving the same deterministic site; see the module docstring.

    Every host k serves `/` linking `/page/0`; page i links pages 2i+1 and 2i+2 (below
    `pages_per_host`), page i of host k+1 (absolute URL), `/private/secret-i` when i % 20 == 0,
    a `#reviews` and a `?utm_source=x&utm_medium=email` variant of its first child when
    i % 10 == 4; pages 1-3 link the special pages (`SPECIAL_LINKS`), page 2 also a `mailto:`
    and a `javascript:` link.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        pages_per_host: int = 100,
        slow_seconds: float = 1.5,
        retry_after: int = 2,
        crawl_delay: float | None = None,
        latency: float = 0.0,
    ) -> None:
        if pages_per_host < 10:
            raise ValueError("pages_per_host must be at least 10: page 4 links variants of page 9")
        self.pages_per_host = pages_per_host
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.crawl_delay = crawl_delay
        self.latency = latency
        self._lock = threading.Lock()
        self._log: list[RequestLog] = []
        self._hits: Counter[tuple[int, str]] = Counter()
        self._servers: list[_HostServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0
        self.hosts: list[str] = []
        self.base_urls: list[str] = []  # "http://127.0.0.2:PORT", no trailing slash
        self.start_urls: list[str] = []  # the three index pages

    # Lifecycle

    def start(self) -> Self:
        self._servers = self._bind()
        self.port = int(self._servers[0].server_address[1])
        self.hosts = [s.host for s in self._servers]
        self.base_urls = [f"http://{h}" for h in self.hosts]
        self.start_urls = [f"{b}/" for b in self.base_urls]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _bind(self) -> list[_HostServer]:
        """One port free on all three addresses: the first host picks it, the others try it."""
        for _ in range(50):
            servers = [_HostServer(self, 0, (ADDRESSES[0], 0))]
            try:
                for index, address in enumerate(ADDRESSES[1:], 1):
                    port = int(servers[0].server_address[1])
                    servers.append(_HostServer(self, index, (address, port)))
            except OSError:
                for server in servers:
                    server.server_close()
                continue
            return servers
        raise RuntimeError("no port free on all of " + ", ".join(ADDRESSES))

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._servers, self._threads = [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget the request log and the flaky/busy counters."""
        with self._lock:
            self._log.clear()
            self._hits.clear()

    # URLs and expectations

    def url(self, host_index: int, path: str) -> str:
        return f"{self.base_urls[host_index]}{path}"

    def links(self, host_index: int, path: str) -> list[str]:
        """The hrefs of a page, exactly as they appear in its HTML."""
        n = self.pages_per_host
        if path == "/":
            return ["/page/0", "/page/0#top"]
        match = re.fullmatch(r"/page/(\d+)", path)
        if not match or int(match[1]) >= n:
            return []
        i = int(match[1])
        children = [c for c in (2 * i + 1, 2 * i + 2) if c < n]
        links = [f"/page/{c}" for c in children]
        links.append(f"{self.base_urls[(host_index + 1) % len(self.hosts)]}/page/{i}")
        if i % 20 == 0:
            links.append(f"/private/secret-{i}")
        if i % 10 == 4 and children:
            links += [
                f"/page/{children[0]}#reviews",
                f"/page/{children[0]}?utm_source=x&utm_medium=email",
            ]
        links += SPECIAL_LINKS.get(i, ())
        if i == 2:
            links += IGNORED_LINKS
        return links

    def host_index(self, url: str) -> int:
        return self.hosts.index(urlsplit(url).netloc)

    def expected_item(self, url: str) -> dict[str, str] | None:
        """What rules {"title": "h1", "price": ".price"} extract from `url`, fetched following
        redirects (so /moved gives page 5's item); None where no item is expected: errors,
        404s, the redirect loop, /huge (over any sane size limit) and robots.txt.
        Pages other than /page/i carry price "0.00"; private pages do have an item,
        a crawler must not fetch them for robots.txt says so.
        """
        host, path = self.host_index(url), urlsplit(url).path
        path = "/page/5" if path == "/moved" else path
        if path in NO_ITEM:
            return None
        match = re.fullmatch(r"/page/(\d+)", path)
        if match:
            i = int(match[1])
            if i >= self.pages_per_host:
                return None
            return {"title": f"Page {host}-{i}", "price": price(host, i)}
        title = self._special_title(host, path)
        return None if title is None else {"title": title, "price": "0.00"}

    def expected_tags(self, url: str) -> list[str]:
        """The texts of `a.tag` on a /page/i page (two of them); [] elsewhere."""
        match = re.fullmatch(r"/page/(\d+)", urlsplit(url).path)
        return tags(self.host_index(url), int(match[1])) if match else []

    def _special_title(self, host: int, path: str) -> str | None:
        if path == "/":
            return f"Index {host}"
        if match := re.fullmatch(r"/private/secret-(\d+)", path):
            return f"Secret {host}-{match[1]}"
        if path in ("/dup-1", "/dup-2"):
            return "Duplicate"
        if path == "/latin1":
            return "Café latin-1"
        if path in SPECIAL_PATHS:
            return path.strip("/").capitalize()
        return None

    def allowed_urls(self) -> set[str]:
        """Every URL a full crawl from the three index pages fetches that robots.txt allows,
        normalised (`normalise_url`), redirect targets included, robots.txt itself not."""
        seen = {normalise_url(u) for u in self.start_urls}
        todo = list(seen)
        while todo:
            url = todo.pop()
            parts = urlsplit(url)
            found = [urljoin(url, href) for href in self.links(self.host_index(url), parts.path)]
            if parts.path in REDIRECTS:
                found.append(urljoin(url, REDIRECTS[parts.path]))
            for new in found:
                new = normalise_url(new)
                private = urlsplit(new).path.startswith("/private/")
                if new.startswith("http") and not private and new not in seen:
                    seen.add(new)
                    todo.append(new)
        return seen

    # The request log

    @property
    def requests(self) -> list[RequestLog]:
        with self._lock:
            return sorted(self._log, key=lambda r: r.arrived)

    def _record(self, entry: RequestLog) -> None:
        with self._lock:
            self._log.append(entry)

    def for_host(self, host: str) -> list[RequestLog]:
        return [r for r in self.requests if r.host == host]

    def count(self, host: str, path: str) -> int:
        """Requests for `path` (any query string) to `host` ("127.0.0.2:PORT")."""
        return sum(r.path == path for r in self.for_host(host))

    def paths_fetched(self, host: str) -> set[str]:
        return {r.path for r in self.for_host(host)}

    def fetched_urls(self) -> Counter[str]:
        """Requests per URL (with the query string as requested), robots.txt included."""
        return Counter(f"http://{r.host}{r.target}" for r in self.requests)

    def max_in_window(self, host: str, window: float = 1.0) -> int:
        """The most requests (robots.txt included) to `host` arriving within `window` seconds."""
        return max_in_window((r.arrived for r in self.for_host(host)), window)

    def first_retry_gap(self, host: str, path: str) -> float | None:
        """Seconds from the first 429/503 answer for `path` to the next request for it."""
        log = [r for r in self.for_host(host) if r.path == path]
        for refused, retry in itertools.pairwise(log):
            if refused.status in (429, 503):
                return retry.arrived - refused.answered
        return None

    # Serving

    def _hit(self, host: int, path: str) -> int:
        with self._lock:
            self._hits[host, path] += 1
            return self._hits[host, path]

    def _respond(self, host: int, path: str, headers: Message) -> _Response:
        page = re.fullmatch(r"/page/(\d+)", path)
        title = self._special_title(host, path)
        match path:
            case "/robots.txt":
                text = "User-agent: *\nDisallow: /private/\n"
                if self.crawl_delay is not None:
                    text += f"Crawl-delay: {self.crawl_delay:g}\n"
                return _Response(200, text.encode(), "text/plain; charset=utf-8")
            case _ if page and int(page[1]) < self.pages_per_host:
                i = int(page[1])
                body = _html(
                    f"Page {host}-{i}", price(host, i), self.links(host, path), tags(host, i)
                )
                return _Response(200, body.encode())
            case "/slow":
                time.sleep(self.slow_seconds)
            case "/error":
                return _Response(500, _html("Error").encode())
            case "/flaky" if self._hit(host, path) <= 2:
                return _Response(500, _html("Flaky failure").encode())
            case "/busy" | "/unavailable" if self._hit(host, path) == 1:
                status = 429 if path == "/busy" else 503
                headers_out = {"Retry-After": str(self.retry_after)}
                return _Response(status, _html("Come back later").encode(), headers=headers_out)
            case "/loop-a" | "/loop-b" | "/moved":
                target = REDIRECTS[path]
                if path == "/moved":  # absolute, where the loop uses relative Locations
                    target = self.url(host, target)
                status = 301 if path == "/moved" else 302
                return _Response(status, _html("Moved").encode(), headers={"Location": target})
            case "/huge":
                return _Response(200, self._huge())
            case "/latin1":
                body = _html("Café latin-1").replace('charset="utf-8"', 'charset="iso-8859-1"')
                return _Response(200, body.encode("iso-8859-1"), "text/html")
            case "/etag":
                validators = {"ETag": '"v1"', "Last-Modified": LAST_MODIFIED}
                if headers.get("If-None-Match") == '"v1"' or (
                    headers.get("If-None-Match") is None
                    and headers.get("If-Modified-Since") == LAST_MODIFIED
                ):
                    return _Response(304, headers=validators)
                return _Response(200, _html(title or "").encode(), headers=validators)
        if title is None or path == "/gone":
            return _Response(404, _html("Not found").encode())
        return _Response(200, _html(title, links=self.links(host, path)).encode())

    @staticmethod
    def _huge() -> Iterator[bytes]:
        head = b'<!doctype html><html><body><h1>Huge</h1><span class="price">0.00</span><!--'
        tail = b"--></body></html>"
        yield head
        left = HUGE_BYTES - len(head) - len(tail)
        while left > 0:
            yield b"x" * min(left, 64 * 1024)
            left -= 64 * 1024
        yield tail


# Proxies


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(
    port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"proxy on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def start_proxy(
    port: int, data_dir: Path | None = None, log: Path | None = None, wait: bool = True
) -> subprocess.Popen[bytes]:
    """A proxy.py process on 127.0.0.1:`port`, accepting connections when this returns
    (unless not `wait`: then call `wait_listening`). Its output goes to `log`, if given.

    proxy.py runs its acceptor in a child process which keeps serving when only the parent
    dies, so it gets a session of its own and is killed as a process group (`kill_proxy`).
    """
    data_dir = data_dir or Path(tempfile.gettempdir()) / "conveyor-proxy-py"
    with log.open("ab") if log else open(os.devnull, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "proxy",
                "--hostname", "127.0.0.1", "--port", str(port),
                "--num-workers", "1", "--num-acceptors", "1",
                "--log-level", "WARNING",
                # Else it creates ~/.proxy: --data-dir does not move the cache directory.
                "--data-dir", str(data_dir), "--cache-dir", str(data_dir / "cache"),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )  # fmt: skip
    if wait:
        try:
            wait_listening(port, process=process)
        except BaseException:
            kill_proxy(process)
            raise
    return process


def kill_proxy(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


class Proxies:
    """`count` proxy.py processes on free 127.0.0.1 ports: `with Proxies() as proxies:`."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.ports: list[int] = []
        self.urls: list[str] = []  # "http://127.0.0.1:PORT", for httpx's proxy=
        self.processes: list[subprocess.Popen[bytes]] = []
        self._data_dir = tempfile.TemporaryDirectory(prefix="proxies-")

    def start(self) -> Self:
        for index in range(self.count):  # all starting at once: each takes ~0.4 s
            port = free_port()
            data_dir = Path(self._data_dir.name) / str(index)
            process = start_proxy(port, data_dir, data_dir.with_suffix(".log"), wait=False)
            self.processes.append(process)
            self.ports.append(port)
            self.urls.append(f"http://127.0.0.1:{port}")
        try:
            for port, process in zip(self.ports, self.processes, strict=True):
                wait_listening(port, process=process)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL proxy `index` (and its acceptor process): connections to it are refused."""
        kill_proxy(self.processes[index])

    def alive(self, index: int) -> bool:
        return self.processes[index].poll() is None

    def stop(self) -> None:
        for process in self.processes:
            kill_proxy(process, signal.SIGTERM)
        self._data_dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _BanHandler(_QuietHandler):
    server: _BanServer

    def _ban(self) -> None:
        with self.server.lock:
            self.server.requests.append(self.path)
        body = b"Forbidden: your address is banned\n"
        self.send_response(403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_CONNECT = _ban


class _BanServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _BanHandler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]


class BanningProxy:
    """An HTTP proxy whose exit address the site has banned: 403 to every request.

    `url` is for httpx's proxy=; `targets` the request targets it got (absolute form,
    "http://127.0.0.2:PORT/page/0"), `count` how many.
    """

    def __init__(self) -> None:
        self._server = _BanServer()
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def targets(self) -> list[str]:
        with self._server.lock:
            return list(self._server.requests)

    @property
    def count(self) -> int:
        return len(self.targets)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
