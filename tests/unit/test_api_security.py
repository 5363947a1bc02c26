"""The API's answers to a hostile client: security headers, no client Host in URLs, bounded
query parameters, and header fields without line separators (SQLite, no broker: nothing
here gets as far as queueing a job)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from conveyor.api.app import create_app
from conveyor.api.paging import MAX_OFFSET
from conveyor.api.urls import public_base_url, rebase
from conveyor.core import api_keys, db
from conveyor.core.models import Base
from conveyor.core.settings import Settings, get_settings


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    user: str
    admin: str

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key or self.user}", **kwargs.pop("headers", {})}
        return self.client.get(path, headers=headers, **kwargs)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path / 'api.db'}")
    # The Celery app needs a broker URL; nothing listens there, and nothing here publishes.
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("CONVEYOR_API_AUTH_FAILURES_PER_MINUTE", "0")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    with db.session_scope() as session:
        user = api_keys.create_key(session, "user", owner="user").plaintext
        admin = api_keys.create_key(session, "root", owner="root", admin=True).plaintext
    app = create_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(app, client, user, admin)


# --- headers -------------------------------------------------------------------------


def test_every_answer_has_the_security_headers_and_json_may_load_nothing(api: Api) -> None:
    for response in (api.client.get("/health/live"), api.get("/api/v1/jobs/nope")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert "strict-transport-security" not in response.headers  # plain HTTP


def test_hsts_only_over_https(api: Api) -> None:
    with TestClient(api.app, base_url="https://testserver") as secure:
        response = secure.get("/health/live")
    assert response.headers["strict-transport-security"] == "max-age=31536000"


def test_an_unexpected_error_answers_with_the_headers_too(api: Api) -> None:
    @api.app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    response = api.client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def _sources(policy: str, directive: str) -> list[str]:
    for part in policy.split(";"):
        name, *values = part.split()
        if name == directive:
            return values
    raise AssertionError(f"no {directive} in {policy!r}")


def test_swagger_ui_may_load_its_bundle_and_run_exactly_its_own_inline_script(api: Api) -> None:
    response = api.client.get("/docs")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    [inline] = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    scripts = _sources(policy, "script-src")
    assert scripts == ["https://cdn.jsdelivr.net", f"'sha256-{digest}'"]
    assert "'unsafe-inline'" not in scripts
    assert "https://cdn.jsdelivr.net" in _sources(policy, "style-src")
    assert _sources(policy, "connect-src") == ["'self'"]  # "Try it out" calls this API
    assert _sources(policy, "frame-ancestors") == ["'none'"]
    assert _sources(policy, "default-src") == ["'none'"]
    assert int(response.headers["content-length"]) == len(response.content)


def test_redoc_may_start_its_search_worker_and_pages_elsewhere_are_tight(api: Api) -> None:
    policy = api.client.get("/redoc").headers["content-security-policy"]
    assert _sources(policy, "script-src") == ["https://cdn.jsdelivr.net"]  # no inline script
    assert _sources(policy, "worker-src") == ["blob:"]

    @api.app.get("/page")
    def page() -> Any:
        from fastapi.responses import HTMLResponse

        return HTMLResponse("<p>hi</p><script>alert(1)</script>")

    policy = api.client.get("/page").headers["content-security-policy"]
    assert _sources(policy, "default-src") == ["'self'"]
    assert "'unsafe-inline'" not in policy


# --- no Host header in URLs ----------------------------------------------------------


def test_a_forged_host_never_reaches_a_location_header(api: Api) -> None:
    response = api.get(
        "/api/v1/jobs/", headers={"Host": "evil.example"}, follow_redirects=False
    )  # Starlette redirects to the path without the slash, built from the Host header
    assert response.status_code == 307
    assert response.headers["location"] == "/api/v1/jobs"


def test_the_public_base_url_makes_urls_absolute(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PUBLIC_BASE_URL", "https://jobs.example.com/")
    get_settings.cache_clear()
    response = api.get("/api/v1/jobs/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.headers["location"] == "https://jobs.example.com/api/v1/jobs"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://jobs.example.com/", "https://jobs.example.com"),
        ("http://127.0.0.1:8000/conveyor/", "http://127.0.0.1:8000/conveyor"),
        ("", None),
    ],
)
def test_public_base_url_is_normalized(value: str, expected: str | None) -> None:
    assert Settings(public_base_url=value).public_base_url == expected


@pytest.mark.parametrize(
    "value", ["jobs.example.com", "ftp://jobs.example.com", "https://u:p@x.example", "https://x/?a"]
)
def test_public_base_url_must_be_a_plain_http_url(value: str) -> None:
    with pytest.raises(ValidationError, match="public_base_url"):
        Settings(public_base_url=value)


# --- bounded query parameters --------------------------------------------------------


def _numeric_query_parameters(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, name, schema) of every integer or number query parameter, from the OpenAPI
    document: what every route (and its dependencies) accepts."""
    for path, operations in app.openapi()["paths"].items():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                schema = param.get("schema", {})
                for option in [schema, *schema.get("anyOf", [])]:
                    if param["in"] == "query" and option.get("type") in ("integer", "number"):
                        yield path, param["name"], option


def test_every_numeric_query_parameter_has_both_bounds(api: Api) -> None:
    checked, unbounded = [], []
    for path, name, schema in _numeric_query_parameters(api.app):
        checked.append(f"{path} {name}")
        if not {"minimum", "exclusiveMinimum"} & set(schema) or not {
            "maximum",
            "exclusiveMaximum",
        } & set(schema):
            unbounded.append(f"{path} {name}")
    assert "/api/v1/dead-letters offset" in checked
    assert unbounded == []


HUGE = 2**63


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/email-suppressions", {"offset": HUGE}),
        ("/api/v1/email-suppressions", {"limit": HUGE}),
        ("/api/v1/dead-letters", {"offset": HUGE}),
        ("/api/v1/dead-letters", {"limit": -HUGE}),
        ("/api/v1/emails/batch/b1", {"recipients": "true", "offset": HUGE}),
        ("/api/v1/emails/batch/b1", {"recipients": "true", "offset": MAX_OFFSET + 1}),
        ("/api/v1/jobs", {"limit": HUGE}),
        ("/api/v1/payments", {"limit": HUGE}),
        ("/api/v1/dev/mailbox", {"limit": HUGE}),
    ],
)
def test_out_of_range_numbers_are_422_naming_the_parameter(
    api: Api, path: str, params: dict[str, Any]
) -> None:
    response = api.get(path, key=api.admin, params=params)
    assert response.status_code == 422, response.text
    [name] = [name for name in params if name != "recipients"]
    assert response.json()["detail"].startswith(f"query.{name}: ")


def test_the_deepest_offset_is_still_served(api: Api) -> None:
    response = api.get("/api/v1/email-suppressions", params={"offset": MAX_OFFSET})
    assert response.status_code == 200
    assert response.json() == {"items": []}


# --- header fields without line separators -------------------------------------------

SEPARATORS = ["\u0085", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\r", "\n"]


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "Hi{}there"}, "subject"),
        ({"from": "Ada{} Lovelace <ada@example.com>"}, "from"),
        ({"reply_to": "Help{}desk <help@example.com>"}, "reply_to"),
        ({"to": ["Bob{} <bob@example.com>"]}, "to[0]"),
        ({"cc": ["Cy{} <cy@example.com>"]}, "cc[0]"),
    ],
)
def test_a_line_separator_in_a_header_field_is_422_naming_it(
    api: Api, separator: str, change: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"to": ["ada@example.com"], "subject": "Hi", "text": "Body"}
    for name, value in change.items():
        body[name] = (
            [item.format(separator) for item in value]
            if isinstance(value, list)
            else value.format(separator)
        )
    response = api.client.post(
        "/api/v1/emails", json=body, headers={"Authorization": f"Bearer {api.user}"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: must not contain line breaks")


def test_a_line_separator_in_a_batch_subject_is_422_naming_the_recipient(api: Api) -> None:
    body = {
        "recipients": [{"to": "ada@example.com"}],
        "subject": "Monthly\u2028news",
        "text": "Body",
    }
    response = api.client.post(
        "/api/v1/emails/batch", json=body, headers={"Authorization": f"Bearer {api.user}"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("recipients[0].subject: must not contain line")


def test_urls_keep_the_mount_prefix_once() -> None:
    scope = {
        "type": "http",
        "scheme": "http",
        "root_path": "/conveyor",
        "headers": [(b"host", b"evil.example")],
    }
    relative = Settings()
    public = Settings(public_base_url="https://example.com/conveyor")
    location = "http://evil.example/conveyor/api/v1/jobs"
    assert rebase(location, scope, relative) == "/conveyor/api/v1/jobs"
    assert rebase(location, scope, public) == "https://example.com/conveyor/api/v1/jobs"
    assert rebase("https://elsewhere.example/x", scope, relative) == "https://elsewhere.example/x"
    assert public_base_url(scope, relative) == "/conveyor"
    assert public_base_url(None, public) == "https://example.com/conveyor"
