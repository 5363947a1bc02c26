"""Security headers on every answer, and no client-sent Host in a Location header.

Every answer: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY` and a Content-Security-Policy: nothing at all for JSON and other
non-pages, same-origin files only for HTML pages, and for the API docs (/docs, /redoc) just
what Swagger UI and ReDoc load from jsDelivr plus their inline bootstrap script, allowed by
its hash. `Strict-Transport-Security` only on answers to HTTPS requests (uvicorn takes the
scheme from X-Forwarded-Proto when the proxy is in its --forwarded-allow-ips).
A header the route set itself is kept.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.urls import rebase

COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
# Not a page: nothing may run in it, load from it as a document, or frame it.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# A page of ours: its own scripts and styles as files, nothing inline, never framed.
PAGE_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI and ReDoc: bundles and styles from jsDelivr, fonts for ReDoc, ReDoc's search
# worker from a blob: URL. Both libraries set styles at run time, hence 'unsafe-inline' for
# styles only; inline scripts are allowed one by one, by hash.
DOCS_POLICY = (
    "default-src 'none'; script-src https://cdn.jsdelivr.net{hashes}; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HSTS = "max-age=31536000"
# For answers made outside this middleware (a 500 from Starlette's outermost error handler).
API_HEADERS = {**COMMON, "content-security-policy": API_POLICY}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def script_hashes(html: bytes) -> str:
    """CSP sources for the page's inline scripts: ` 'sha256-...'` for each."""
    return "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    )


class SecurityHeaders:
    """Pure ASGI, so event streams pass through unbuffered; only docs pages are held back,
    to hash their inline scripts."""

    def __init__(self, app: ASGIApp, docs_paths: Collection[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = bytearray()

        async def secure(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                self._add(scope, headers)
                if self._is_page(headers) and self._app_path(scope) in self.docs_paths:
                    held = message  # the policy needs the body's scripts
                    return
            elif held is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                headers = MutableHeaders(scope=held)
                headers["content-security-policy"] = DOCS_POLICY.format(
                    hashes=script_hashes(bytes(body))
                )
                await send(held)
                message = {"type": "http.response.body", "body": bytes(body)}
            await send(message)

        await self.app(scope, receive, secure)

    @staticmethod
    def _app_path(scope: Scope) -> str:
        """The path without the --root-path prefix (servers differ on including it)."""
        path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
        return path[len(root) :] if root and path.startswith(root) else path

    @staticmethod
    def _is_page(headers: MutableHeaders) -> bool:
        return headers.get("content-type", "").startswith("text/html")

    def _add(self, scope: Scope, headers: MutableHeaders) -> None:
        for name, value in COMMON.items():
            headers.setdefault(name, value)
        headers.setdefault(
            "content-security-policy", PAGE_POLICY if self._is_page(headers) else API_POLICY
        )
        if scope.get("scheme") == "https":
            headers.setdefault("strict-transport-security", HSTS)
        location = headers.get("location")
        if location is not None:
            # Starlette builds redirects (a trailing slash) from the Host header.
            headers["location"] = rebase(location, scope)
