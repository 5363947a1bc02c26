"""Images: upload, validate, and variants made in parallel as a Celery canvas."""

from __future__ import annotations

from conveyor.core.workloads import Workload

workload = Workload(
    name="images",
    tasks="conveyor.workloads.images.tasks",
    queues={"images": ("conveyor.workloads.images.*",)},
    api="conveyor.workloads.images.api",
    settings="conveyor.workloads.images.settings:ImagesSettings",
    extra="images",
    needs=("pyvips",),
)
