"""Canvas workflows submitted through Conveyor: children recorded, parent follows them."""

from __future__ import annotations

import httpx
from celery import chain, chord, group

from conveyor.core.jobs import submit_workflow
from conveyor.diagnostics.tasks import run_diagnostics
from tests.integration.conftest import Stack


def _step(**kwargs: object):  # type: ignore[no-untyped-def]
    # Immutable: a chain must not pass one step's result into the next as an argument.
    return run_diagnostics.si(**{"steps": 1, "step_seconds": 0.05, **kwargs})


def _children(admin: httpx.Client, parent_id: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = admin.get(
        "/api/v1/jobs", params={"parent_id": parent_id, "limit": 50}
    ).json()["items"]
    return items


def test_chain_records_children_and_parent_progress(stack: Stack, admin: httpx.Client) -> None:
    parent = submit_workflow(chain(_step(), _step(), _step()), owner="ops")
    queued = _children(admin, parent.id)
    assert len(queued) == 3
    done = stack.wait_job(parent.id, {"succeeded", "failed"})
    assert done["name"] == "workflow.chain"
    assert done["state"] == "succeeded"
    assert done["progress"]["current"] == 3
    assert done["progress"]["total"] == 3
    children = _children(admin, parent.id)
    assert {child["state"] for child in children} == {"succeeded"}
    assert all(child["parent_id"] == parent.id for child in children)


def test_chain_failure_cancels_later_steps(stack: Stack, admin: httpx.Client) -> None:
    workflow = chain(_step(), _step(fail_attempts=1, failure="permanent"), _step())
    parent = submit_workflow(workflow, owner="ops")
    done = stack.wait_job(parent.id, {"succeeded", "failed"})
    assert done["state"] == "failed"
    states = sorted(str(child["state"]) for child in _children(admin, parent.id))
    assert states == ["cancelled", "dead", "succeeded"]


def test_group_and_chord(stack: Stack, admin: httpx.Client) -> None:
    grouped = submit_workflow(group(_step(), _step(), _step(), _step()), owner="ops")
    done = stack.wait_job(grouped.id, {"succeeded", "failed"})
    assert done["state"] == "succeeded"
    assert done["progress"]["current"] == 4

    joined = submit_workflow(chord([_step(), _step()], _step()), owner="ops", name="report.build")
    done = stack.wait_job(joined.id, {"succeeded", "failed"})
    assert done["name"] == "report.build"
    assert done["state"] == "succeeded"
    assert done["progress"]["total"] == 3
    assert {child["state"] for child in _children(admin, joined.id)} == {"succeeded"}
