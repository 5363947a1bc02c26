"""The canvas: chain([fetch,] validate, chord(group(one task per variant), finalize)).

`fetch` leads only for an image given by URL whose bytes are not stored yet.

Every step's task id is the ledger job `service.record_run` recorded, so the ledger knows
each step before its message exists.
"""

from __future__ import annotations

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from conveyor.core.celery_app import get_celery
from conveyor.core.jobs import HEADER_OWNER, HEADER_RECORDED
from conveyor.workloads.images.service import Run

FETCH = "conveyor.workloads.images.fetch"
VALIDATE = "conveyor.workloads.images.validate"
VARIANT = "conveyor.workloads.images.variant"
FINALIZE = "conveyor.workloads.images.finalize"


def build(app: Celery, image_id: str, run: Run) -> Signature:
    def step(task: str, task_id: str, **kwargs: str) -> Signature:
        # Immutable: no step takes the previous one's result; they read the image's rows.
        return app.signature(
            task, kwargs={"image_id": image_id, **kwargs}, task_id=task_id, immutable=True
        )

    variants = group([step(VARIANT, job_id, name=name) for name, job_id in run.variant_ids.items()])
    first = [step(FETCH, run.fetch_id)] if run.fetch_id else []
    return chain(
        *first,
        step(VALIDATE, run.validate_id),
        chord(variants, step(FINALIZE, run.finalize_id)),
    )


def publish(image_id: str, owner: str, run: Run, *, app: Celery | None = None) -> None:
    app = app or get_celery()
    canvas = build(app, image_id, run)
    canvas.apply_async(headers={HEADER_RECORDED: "1", HEADER_OWNER: owner})
