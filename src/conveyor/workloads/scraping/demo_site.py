"""A small shop to crawl while trying Conveyor out: `conveyor up` serves it on loopback.

    python -m conveyor.workloads.scraping.demo_site --port 8092

Three categories of ten products, paged category lists, a robots.txt that keeps crawlers
out of /cart/ and asks for a Crawl-delay of 0.2 s; every product page has an <h1>, a
.price and a .sku, for extraction rules such as {"title": "h1", "price": ".price"}.
"""

from __future__ import annotations

import argparse
import html
import signal
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CATEGORIES = ("kettles", "teapots", "mugs")
PER_CATEGORY = 10
PER_LIST_PAGE = 4
ROBOTS = "User-agent: *\nDisallow: /cart/\nCrawl-delay: 0.2\n"


def price(product: int) -> str:
    return f"{9 + (product * 37) % 90}.{(product * 13) % 100:02d}"


def _page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}"
        "<p><a href='/'>Home</a></p></body></html>"
    ).encode()


def _links(pairs: list[tuple[str, str]]) -> str:
    items = "".join(f"<li><a href='{href}'>{html.escape(text)}</a></li>" for href, text in pairs)
    return f"<ul>{items}</ul>"


def render(path: str, query: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of a path of the shop."""
    if path == "/robots.txt":
        return 200, ROBOTS.encode(), "text/plain"
    if path == "/":
        pairs = [(f"/category/{name}", name.title()) for name in CATEGORIES]
        return 200, _page("Demo shop", _links(pairs)), "text/html; charset=utf-8"
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "category" and parts[1] in CATEGORIES:
        index = CATEGORIES.index(parts[1])
        number = int(query[5:]) if query.startswith("page=") and query[5:].isdigit() else 1
        first = index * PER_CATEGORY + (number - 1) * PER_LIST_PAGE
        last = min(first + PER_LIST_PAGE, (index + 1) * PER_CATEGORY)
        pairs = [(f"/product/{n}", f"Product {n}") for n in range(first, last)]
        if last < (index + 1) * PER_CATEGORY:
            pairs.append((f"/category/{parts[1]}?page={number + 1}", "Next page"))
        return 200, _page(parts[1].title(), _links(pairs)), "text/html; charset=utf-8"
    if len(parts) == 2 and parts[0] == "product" and parts[1].isdigit():
        product = int(parts[1])
        if product < len(CATEGORIES) * PER_CATEGORY:
            body = (
                f"<span class='price'>{price(product)}</span>"
                f"<span class='sku'>SKU-{product:04d}</span>"
                f"<a href='/cart/add/{product}'>Add to cart</a>"
            )
            return 200, _page(f"Product {product}", body), "text/html; charset=utf-8"
    return 404, _page("Not found", ""), "text/html; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        status, body, content_type = render(path, query)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _stop(*_: Any) -> None:
    raise SystemExit(0)  # out of serve_forever, then the socket is closed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
