"""The request body size limit, in front of a tiny app that echoes the body length."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.types import Message

from conveyor.api.limits import BodySizeLimit

with warnings.catch_warnings():
    # Starlette asks for `httpx2`; the test client works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LIMIT = 1024


class Echo:
    def __init__(self) -> None:
        self.calls = 0
        self.started = False

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self.started = True
            yield

        app = FastAPI(lifespan=lifespan)

        @app.post("/echo")
        async def echo(request: Request) -> dict[str, int]:
            self.calls += 1
            return {"length": len(await request.body())}

        @app.post("/json")
        async def parse(payload: dict[str, Any]) -> dict[str, int]:
            self.calls += 1
            return {"keys": len(payload)}

        self.app = app


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def client(echo: Echo) -> Iterator[TestClient]:
    with TestClient(BodySizeLimit(echo.app, max_bytes=LIMIT)) as client:
        yield client


def chunks(total: int, size: int = 256) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def assert_too_large(response: Any) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": f"request body is larger than {LIMIT} bytes"}


@pytest.mark.parametrize("size", [0, 1, 100, LIMIT])
def test_bodies_within_the_limit_pass(client: TestClient, echo: Echo, size: int) -> None:
    response = client.post("/echo", content=b"a" * size)
    assert response.status_code == 200
    assert response.json() == {"length": size}
    assert echo.calls == 1


@pytest.mark.parametrize("size", [LIMIT + 1, 10 * LIMIT])
def test_a_declared_body_over_the_limit_is_refused_unread(
    client: TestClient, echo: Echo, size: int
) -> None:
    assert_too_large(client.post("/echo", content=b"a" * size))
    assert echo.calls == 0


def test_a_chunked_body_over_the_limit_is_refused(client: TestClient, echo: Echo) -> None:
    response = client.post("/echo", content=chunks(3 * LIMIT))
    assert_too_large(response)


def test_a_chunked_body_over_the_limit_is_refused_before_json_parsing(
    client: TestClient, echo: Echo
) -> None:
    body = json.dumps({"k": "v" * 2 * LIMIT}).encode()
    response = client.post(
        "/json",
        content=iter([body[:500], body[500:]]),
        headers={"content-type": "application/json"},
    )
    assert_too_large(response)
    assert echo.calls == 0


def test_a_chunked_body_within_the_limit_passes(client: TestClient) -> None:
    response = client.post("/echo", content=chunks(LIMIT - 24))
    assert response.status_code == 200
    assert response.json() == {"length": LIMIT - 24}


@pytest.mark.parametrize("value", ["abc", "12abc", "", "1.5"])
def test_a_bad_content_length_is_a_400(client: TestClient, echo: Echo, value: str) -> None:
    response = client.post("/echo", content=b"abc", headers={"Content-Length": value})
    assert response.status_code == 400
    assert response.json() == {"detail": "Content-Length is not a number"}
    assert echo.calls == 0


def test_lifespan_events_reach_the_app(client: TestClient, echo: Echo) -> None:
    assert echo.started is True


def run_asgi(app: BodySizeLimit, headers: list[tuple[bytes, bytes]], body: bytes) -> list[Message]:
    """Drive the middleware by hand, for headers a client library would correct."""
    sent: list[Message] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_an_understated_content_length_still_cannot_exceed_the_limit(echo: Echo) -> None:
    sent = run_asgi(
        BodySizeLimit(echo.app, max_bytes=LIMIT), [(b"content-length", b"10")], b"x" * 5000
    )
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:])) == {
        "detail": f"request body is larger than {LIMIT} bytes"
    }


def test_a_raw_non_numeric_content_length_is_a_400(echo: Echo) -> None:
    sent = run_asgi(BodySizeLimit(echo.app, max_bytes=LIMIT), [(b"content-length", b"ten")], b"")
    assert sent[0]["status"] == 400
    assert echo.calls == 0


def test_a_path_prefix_can_have_a_larger_limit(echo: Echo) -> None:
    app = BodySizeLimit(echo.app, max_bytes=LIMIT, per_prefix={"/echo": 4 * LIMIT})
    with TestClient(app) as client:
        allowed = client.post("/echo", content=b"x" * (3 * LIMIT))
        assert allowed.status_code == 200
        assert allowed.json() == {"length": 3 * LIMIT}
        over = client.post("/echo", content=b"x" * (5 * LIMIT))
        assert over.status_code == 413
        assert over.json() == {"detail": f"request body is larger than {4 * LIMIT} bytes"}
        # Other paths keep the default limit.
        assert_too_large(client.post("/json", content=b"x" * (2 * LIMIT)))


def test_a_prefix_matches_whole_path_segments_only(echo: Echo) -> None:
    app = BodySizeLimit(echo.app, max_bytes=LIMIT, per_prefix={"/api/v1/images": 10 * LIMIT})
    assert app.limit_for("/api/v1/images") == 10 * LIMIT
    assert app.limit_for("/api/v1/images/abc/retry") == 10 * LIMIT
    assert app.limit_for("/api/v1/imagesX") == LIMIT
    assert app.limit_for("/api/v1/jobs") == LIMIT
