"""Absolute URLs in answers come from CONVEYOR_PUBLIC_BASE_URL, never from the request.

The Host header is whatever the client sends: copied into a URL, a forged one puts the
sender's origin into links that other people follow, or that a cache keeps for them.
Unset, answers carry relative URLs (`/api/v1/...`), which resolve against the API's own
address on the client's side.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

from conveyor.core.settings import Settings, get_settings


def public_base_url(scope: Scope | None = None, settings: Settings | None = None) -> str:
    """What goes before an API path: the configured base URL (any path prefix included), or
    else just the prefix the app is mounted under (--root-path), for a relative URL."""
    configured = (settings or get_settings()).public_base_url
    if configured:
        return configured
    return str(scope.get("root_path", "")).rstrip("/") if scope is not None else ""


def request_origin(scope: Scope) -> str:
    """The origin Starlette builds URLs from (scheme and Host header): untrusted."""
    host = Headers(scope=scope).get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else ""
    return f"{scope.get('scheme', 'http')}://{host}"


def rebase(url: str, scope: Scope, settings: Settings | None = None) -> str:
    """`url` with the request's own origin replaced by the public base URL (or removed)."""
    origin = request_origin(scope)
    if not (url == origin or url.startswith(origin + "/")):
        return url
    path = url[len(origin) :] or "/"
    root = str(scope.get("root_path", "")).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"  # public_base_url() puts the prefix back
    return public_base_url(scope, settings) + path


# Per app, each route's path with "{name}" where each parameter goes: url_path_for walks
# every route of every included router, which is a good part of a short request's cost.
_templates: WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...]], str]] = WeakKeyDictionary()


def path_to(request: Request, route_name: str, **params: str) -> str:
    """The path of one of Conveyor's routes as this app serves it: under whatever prefix the
    router was included with, and the root path; relative, like every URL in answers."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    if any(not isinstance(value, str) or "/" in value for value in params.values()):
        # Not a plain path segment: Starlette's own checks decide.
        return root + str(request.app.url_path_for(route_name, **params))
    names = tuple(sorted(params))
    known = _templates.setdefault(request.app, {})
    template = known.get((route_name, names))
    if template is None:
        marked = {name: f"{{{name}}}" for name in names}
        template = str(request.app.url_path_for(route_name, **marked))
        known[(route_name, names)] = template
    for name in names:
        template = template.replace(f"{{{name}}}", params[name])
    return root + template
