"""path_to: a route's path as the app serves it, from a template kept per app."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, Request
from starlette.testclient import TestClient

from conveyor.api.urls import path_to


def _app(prefix: str) -> FastAPI:
    router = APIRouter()

    @router.get("/jobs/{job_id}", name="conveyor.job")
    def job(job_id: str) -> dict[str, str]:
        return {"id": job_id}

    @router.get("/where/{job_id}")
    def where(job_id: str, request: Request) -> dict[str, str]:
        return {"url": path_to(request, "conveyor.job", job_id=job_id)}

    app = FastAPI()
    app.include_router(router, prefix=prefix)
    return app


@pytest.mark.parametrize(("prefix", "root_path"), [("/api/v1", ""), ("/jobs-api", "/mounted")])
def test_each_app_gets_its_own_paths_under_its_prefix(prefix: str, root_path: str) -> None:
    with TestClient(_app(prefix), root_path=root_path) as client:
        for job_id in ("a1", "b2", "c%7Bd"):
            answer = client.get(f"{root_path}{prefix}/where/{job_id}").json()
            assert answer == {"url": f"{root_path}{prefix}/jobs/{job_id.replace('%7B', '{')}"}


def test_a_value_that_is_not_one_segment_is_refused_as_starlette_refuses_it() -> None:
    app = _app("/api")
    with TestClient(app) as client:
        assert client.get("/api/where/x").json() == {"url": "/api/jobs/x"}
    scope = {"type": "http", "app": app, "root_path": ""}
    with pytest.raises(AssertionError, match="path separators"):
        path_to(Request(scope), "conveyor.job", job_id="a/b")
