"""A running job looks at its cancel flag in Redis at most once per progress interval."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from conveyor.core.celery_app import get_celery
from conveyor.core.errors import JobCancelled
from conveyor.core.redis_client import cancel_key
from conveyor.core.settings import get_settings
from conveyor.core.task import CANCEL_CHECKED_ATTRIBUTE, ConveyorTask

pytestmark = pytest.mark.integration


class Reporting(ConveyorTask):
    track = False  # the flag is Redis's; no ledger needed to look at it
    name = "tests.integration.reporting"

    def run(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("interval", [0.0, 0.3])
def test_a_cancel_is_seen_within_the_interval(
    system_redis_url: str, monkeypatch: pytest.MonkeyPatch, interval: float
) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", system_redis_url)
    monkeypatch.setenv("CONVEYOR_PROGRESS_INTERVAL", str(interval))
    get_settings.cache_clear()
    job_id = f"cancel-check-{uuid.uuid4().hex}"
    task = get_celery().register_task(Reporting())
    task.push_request(id=job_id, called_directly=False)
    client = redis.Redis.from_url(system_redis_url)
    try:
        task.report_progress(1, 10)  # not cancelled: looks, and remembers when
        client.set(cancel_key(job_id), "1", ex=60)
        looked_at = getattr(task.request, CANCEL_CHECKED_ATTRIBUTE)
        if interval:
            task.report_progress(2, 10)  # within the interval: no look yet
            time.sleep(max(0.0, looked_at + interval - time.monotonic()) + 0.02)
        with pytest.raises(JobCancelled):
            task.report_progress(3, 10)
    finally:
        task.pop_request()
        client.delete(cancel_key(job_id))
        client.close()
        get_settings.cache_clear()
