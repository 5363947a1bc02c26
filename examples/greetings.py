"""A task module of your own: `CONVEYOR_TASK_MODULES=examples.greetings` loads it into every
worker, and importing it makes Conveyor's Celery app the current one for `.delay()`."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task

from conveyor.core.errors import PermanentError
from conveyor.core.task import ConveyorTask

OUTBOX = Path("outbox")


@shared_task(bind=True, base=ConveyorTask, name="examples.greet")
def greet(self: ConveyorTask, name: str) -> dict[str, str]:
    """Write a greeting into outbox/; fails for good while that folder is missing."""
    if not OUTBOX.is_dir():
        # Retrying cannot create a folder: a dead letter to replay once someone has.
        raise PermanentError(f"{OUTBOX.resolve()} does not exist: create it, then replay")
    self.report_progress(1, 1, f"greeting {name}")
    path = OUTBOX / f"{name}.txt"
    path.write_text(f"Hello, {name}!\n")
    return {"file": str(path)}
