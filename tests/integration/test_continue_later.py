"""A running job that hands the rest of its work back to run later spends no attempt."""

from __future__ import annotations

from conveyor.core.jobs import Submission, submit
from tests.integration.conftest import Stack


def test_a_job_continued_later_finishes_with_one_attempt(stack: Stack) -> None:
    job = submit(Submission(task_name="tests.later.in_parts", kwargs={"left": 12}))
    finished = stack.wait_job(job.id, {"succeeded", "dead", "failed"}, timeout=60)
    assert finished["state"] == "succeeded"
    assert finished["result"] == {"done": 12}
    # Twelve waits in between, none counted: counted, they would have dead-lettered the job
    # as one that keeps dying (more deliveries than its retries allow).
    assert finished["attempts"] == 1
