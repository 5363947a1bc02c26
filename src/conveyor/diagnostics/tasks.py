"""The diagnostics job: progress, retries and dead letters on demand, for smoke tests."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from conveyor.core.errors import PermanentError, TransientError
from conveyor.core.task import ConveyorTask

TASK_NAME = "conveyor.diagnostics.run"


class DiagnosticsTask(ConveyorTask):
    # Short backoff: an operator watching a smoke test should not wait minutes.
    backoff_base = 0.5
    backoff_max = 2.0
    retry_max = 5


@shared_task(bind=True, base=DiagnosticsTask, name=TASK_NAME)
def run_diagnostics(
    self: DiagnosticsTask,
    steps: int = 3,
    step_seconds: float = 0.1,
    fail_attempts: int = 0,
    failure: str = "transient",
) -> dict[str, Any]:
    """Report progress for each step, failing the first `fail_attempts` attempts."""
    attempt = self.request.retries + 1
    for step in range(1, steps + 1):
        time.sleep(step_seconds)
        self.report_progress(step, steps, f"attempt {attempt}: step {step} of {steps}")
    if attempt <= fail_attempts:
        if failure == "permanent":
            raise PermanentError(f"diagnostics: permanent failure on attempt {attempt}")
        raise TransientError(f"diagnostics: transient failure on attempt {attempt}")
    return {"steps": steps, "attempt": attempt}
