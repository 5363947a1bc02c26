"""Bad input gets a 4xx a person can act on, never a 500, and never reaches a worker."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Stack

ROUTE = "/api/v1/diagnostics/jobs"


def _jobs_count(admin: httpx.Client) -> int:
    return len(admin.get("/api/v1/jobs", params={"limit": 200}).json()["items"])


def test_malformed_json_is_400(stack: Stack, admin: httpx.Client) -> None:
    before = _jobs_count(admin)
    response = admin.post(
        ROUTE, content=b'{"steps": 3,', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    assert _jobs_count(admin) == before


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"steps": "many"}, "steps: Input should be a valid integer"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"steps": 10_000}, "steps: Input should be less than or equal to 1000"),
        ({"failure": "sometimes"}, "failure: Input should be 'transient' or 'permanent'"),
        ({"step_seconds": -1}, "step_seconds"),
        ({"colour": "blue"}, "colour: unknown field"),
        ([1, 2, 3], "Input should be a valid dictionary"),
    ],
)
def test_wrong_types_and_unknown_fields_are_422(
    stack: Stack, admin: httpx.Client, body: object, fragment: str
) -> None:
    response = admin.post(ROUTE, json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_oversized_body_is_413(stack: Stack, admin: httpx.Client) -> None:
    huge = b'{"steps": 1, "pad": "' + b"x" * 2_000_000 + b'"}'
    response = admin.post(ROUTE, content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_oversized_chunked_body_is_413(stack: Stack, admin: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"steps": 1, "pad": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    response = admin.post(ROUTE, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_wrong_content_type_is_4xx(stack: Stack, admin: httpx.Client) -> None:
    response = admin.post(ROUTE, content=b"steps=3", headers={"Content-Type": "text/plain"})
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "params",
    [{"state": "sleeping"}, {"limit": 0}, {"limit": 100000}, {"cursor": "not-a-cursor"}],
)
def test_bad_list_parameters_are_4xx(
    stack: Stack, admin: httpx.Client, params: dict[str, object]
) -> None:
    response = admin.get("/api/v1/jobs", params=params)
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]
