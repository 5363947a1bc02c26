"""The Idempotency-Key route classes on a small FastAPI app (SQLite, no servers)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from conveyor.api.deps import CallerDep
from conveyor.api.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    IdempotencyRequiredRoute,
    IdempotentRoute,
)
from conveyor.core import api_keys, db
from conveyor.core.models import Base, IdempotencyRecord
from conveyor.core.settings import get_settings


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    n: int = 1


class ThingOut(BaseModel):
    id: str
    name: str
    n: int
    owner: str


@dataclass
class Api:
    client: TestClient
    calls: Counter[str]
    alice: str
    bob: str
    gate: threading.Event
    entered: threading.Event

    def post(
        self,
        path: str,
        key: str | None = None,
        *,
        as_: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        headers = {"Authorization": f"Bearer {as_ or self.alice}", **(headers or {})}
        if key is not None:
            headers[HEADER] = key
        return self.client.post(path, headers=headers, **kwargs)


def build_app(calls: Counter[str], gate: threading.Event, entered: threading.Event) -> FastAPI:
    def rate_header(response: Response) -> None:
        # Like the API's rate limit: a header a dependency sets anew for every request.
        calls["rate"] += 1
        response.headers["X-RateLimit-Remaining"] = str(1000 - calls["rate"])

    router = APIRouter(
        prefix="/things", route_class=IdempotentRoute, dependencies=[Depends(rate_header)]
    )

    @router.post("", response_model=ThingOut, status_code=status.HTTP_201_CREATED)
    async def create_thing(body: Thing, caller: CallerDep, response: Response) -> dict[str, Any]:
        calls["create"] += 1
        thing_id = uuid.uuid4().hex
        response.headers["Location"] = f"/things/{thing_id}"
        # An extra key the response model must drop, as FastAPI would.
        return {"id": thing_id, "owner": caller.owner, "secret": "x", **body.model_dump()}

    @router.post("/sync", status_code=status.HTTP_202_ACCEPTED)
    def create_sync(body: Thing) -> dict[str, Any]:
        calls["sync"] += 1
        return {"id": uuid.uuid4().hex, "name": body.name}

    @router.post("/slow", status_code=status.HTTP_202_ACCEPTED)
    def create_slow(body: Thing) -> dict[str, Any]:
        calls["slow"] += 1
        entered.set()
        assert gate.wait(10), "the test never opened the gate"
        return {"id": uuid.uuid4().hex}

    @router.post("/raises")
    async def raises(body: Thing) -> dict[str, Any]:
        calls["raises"] += 1
        raise RuntimeError("boom")

    @router.post("/unavailable")
    async def unavailable(body: Thing) -> Response:
        calls["unavailable"] += 1
        return JSONResponse({"detail": "try later"}, status_code=503)

    @router.post("/conflict")
    async def conflict(body: Thing) -> Response:
        calls["conflict"] += 1
        return JSONResponse({"detail": f"{body.name} exists", "n": calls["conflict"]}, 409)

    @router.post("/raw")
    async def raw(request: Request) -> dict[str, Any]:
        calls["raw"] += 1
        return {"body": (await request.body()).decode(), "call": calls["raw"]}

    @router.get("")
    async def list_things() -> list[str]:
        return []

    required = APIRouter(prefix="/payments", route_class=IdempotencyRequiredRoute)

    @required.post("", status_code=status.HTTP_201_CREATED)
    async def pay(body: Thing) -> dict[str, Any]:
        calls["pay"] += 1
        return {"id": uuid.uuid4().hex, "amount": body.n}

    app = FastAPI()
    app.include_router(router)
    app.include_router(required)
    return app


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "sqlite:///" + (tmp_path / "api.db").as_posix())
    # No servers: the API's own rate limit would reach for Redis.
    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT_PER_MINUTE", "0")
    get_settings.cache_clear()
    Base.metadata.create_all(db.get_engine())
    with db.session_scope() as session:
        alice = api_keys.create_key(session, "alice", owner="alice").plaintext
        bob = api_keys.create_key(session, "bob", owner="bob").plaintext
    calls: Counter[str] = Counter()
    gate, entered = threading.Event(), threading.Event()
    app = build_app(calls, gate, entered)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, calls, alice, bob, gate, entered)
    gate.set()


def records() -> int:
    with db.session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(IdempotencyRecord)) or 0)


def test_without_a_key_every_post_runs(api: Api) -> None:
    first = api.post("/things", json={"name": "a"})
    second = api.post("/things", json={"name": "a"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert api.calls["create"] == 2
    assert REPLAYED_HEADER not in first.headers
    assert records() == 0


def test_same_key_and_body_replays_the_first_response_exactly(api: Api) -> None:
    first = api.post("/things", "key-1", json={"name": "a", "n": 2})
    assert first.status_code == 201
    assert first.json() == {"id": first.json()["id"], "name": "a", "n": 2, "owner": "alice"}
    assert REPLAYED_HEADER not in first.headers
    # Same JSON with other key order and spacing: the same request.
    again = api.post(
        "/things",
        "key-1",
        content=b'{ "n": 2,   "name": "a" }',
        headers={"Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    # Per-request headers are today's, not the stored ones, and appear once.
    assert first.headers["x-ratelimit-remaining"] == "999"
    assert again.headers.get_list("x-ratelimit-remaining") == ["998"]
    assert api.calls["create"] == 1


def test_same_key_other_body_is_422_and_runs_nothing(api: Api) -> None:
    assert api.post("/things", "key-2", json={"name": "a"}).status_code == 201
    other = api.post("/things", "key-2", json={"name": "b"})
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    assert "POST /things" in other.json()["detail"]
    # The same key on another route is another request too.
    assert api.post("/things/sync", "key-2", json={"name": "a"}).status_code == 422
    assert api.calls["create"] == 1
    assert api.calls["sync"] == 0


def test_same_key_while_the_first_runs_is_409(api: Api) -> None:
    results: dict[str, Any] = {}

    def first() -> None:
        results["first"] = api.post("/things/slow", "key-3", json={"name": "a"})

    runner = threading.Thread(target=first)
    runner.start()
    assert api.entered.wait(10)
    busy = api.post("/things/slow", "key-3", json={"name": "a"})
    assert busy.status_code == 409
    assert busy.headers["retry-after"] == "1"
    assert "still being handled" in busy.json()["detail"]
    api.gate.set()
    runner.join(10)
    assert results["first"].status_code == 202
    replay = api.post("/things/slow", "key-3", json={"name": "a"})
    assert replay.status_code == 202
    assert replay.json() == results["first"].json()
    assert api.calls["slow"] == 1


def test_keys_of_another_owner_are_independent(api: Api) -> None:
    alice = api.post("/things", "shared", json={"name": "a"})
    bob = api.post("/things", "shared", json={"name": "a"}, as_=api.bob)
    assert alice.status_code == bob.status_code == 201
    assert REPLAYED_HEADER not in bob.headers
    assert bob.json()["owner"] == "bob"
    assert alice.json()["id"] != bob.json()["id"]
    assert api.calls["create"] == 2


def test_sync_endpoints_work_and_replay(api: Api) -> None:
    first = api.post("/things/sync", "key-4", json={"name": "s"})
    again = api.post("/things/sync", "key-4", json={"name": "s"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert api.calls["sync"] == 1


def test_a_raising_handler_frees_the_key(api: Api) -> None:
    for _ in range(2):
        assert api.post("/things/raises", "key-5", json={"name": "a"}).status_code == 500
    assert api.calls["raises"] == 2
    assert records() == 0


def test_a_5xx_answer_frees_the_key(api: Api) -> None:
    for _ in range(2):
        response = api.post("/things/unavailable", "key-6", json={"name": "a"})
        assert response.status_code == 503
        assert REPLAYED_HEADER not in response.headers
    assert api.calls["unavailable"] == 2
    assert records() == 0


def test_a_4xx_answer_is_stored_and_replayed(api: Api) -> None:
    first = api.post("/things/conflict", "key-7", json={"name": "a"})
    again = api.post("/things/conflict", "key-7", json={"name": "a"})
    assert first.status_code == again.status_code == 409
    assert again.json() == first.json() == {"detail": "a exists", "n": 1}
    assert again.headers[REPLAYED_HEADER] == "true"
    assert api.calls["conflict"] == 1


def test_invalid_body_does_not_use_up_the_key(api: Api) -> None:
    bad = api.post("/things", "key-8", json={"name": ""})
    assert bad.status_code == 422
    assert records() == 0
    good = api.post("/things", "key-8", json={"name": "fixed"})
    assert good.status_code == 201
    assert REPLAYED_HEADER not in good.headers


def test_unauthenticated_requests_never_touch_the_key(api: Api) -> None:
    response = api.client.post("/things", json={"name": "a"}, headers={HEADER: "key-9"})
    assert response.status_code == 401
    assert records() == 0


@pytest.mark.parametrize(
    ("key", "message"),
    [("", "must not be empty"), ("k" * 256, "at most 255"), ("caf\u00e9", "printable ASCII")],
)
def test_malformed_keys_are_400(api: Api, key: str, message: str) -> None:
    headers = {"Authorization": f"Bearer {api.alice}", HEADER: key.encode("latin-1")}
    response = api.client.post("/things", json={"name": "a"}, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert api.calls["create"] == 0


def test_raw_bodies_reach_the_route_and_replay(api: Api) -> None:
    plain = {"Content-Type": "text/plain"}
    first = api.post("/things/raw", "key-10", content=b"name=raw", headers=plain)
    assert first.status_code == 200
    assert first.json() == {"body": "name=raw", "call": 1}
    again = api.post("/things/raw", "key-10", content=b"name=raw", headers=plain)
    assert again.json() == first.json()
    other = api.post("/things/raw", "key-10", content=b"name=other", headers=plain)
    assert other.status_code == 422
    assert api.calls["raw"] == 1


def test_required_route_refuses_a_missing_key(api: Api) -> None:
    missing = api.post("/payments", json={"name": "p", "n": 5})
    assert missing.status_code == 400
    assert "needs an Idempotency-Key" in missing.json()["detail"]
    assert api.calls["pay"] == 0
    first = api.post("/payments", "pay-1", json={"name": "p", "n": 5})
    again = api.post("/payments", "pay-1", json={"name": "p", "n": 5})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert api.calls["pay"] == 1


def test_openapi_documents_the_header_on_post_routes_only(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    post = spec["paths"]["/things"]["post"]
    names = [param["name"] for param in post.get("parameters", [])]
    assert names == [HEADER]
    assert {"400", "409", "422"} <= set(post["responses"])
    assert "parameters" not in spec["paths"]["/things"]["get"]
