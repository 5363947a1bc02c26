"""Tasks that exist only for the integration tests; workers load them via CONVEYOR_TASK_MODULES.

Each group of tests adds its own tasks in a section below.
"""

from __future__ import annotations

# --- locks and rate limits ---
# Imports stay in this section so each section can be added or removed on its own.
import json as _limits_json
import time as _limits_time
from typing import Any as _LimitsAny

from celery import shared_task as _limits_shared_task

from conveyor.core.redis_client import get_redis as _limits_redis
from conveyor.core.task import ConveyorTask as _LimitsBase


class UniqueProbe(_LimitsBase):
    unique_for = 30
    unique_key = "{name}"


@_limits_shared_task(bind=True, base=UniqueProbe, name="tests.limits.unique_probe")
def unique_probe(self: UniqueProbe, name: str, seconds: float = 1.0) -> int:
    """Counts its runs per name, so a test can tell one run from two."""
    runs = int(_limits_redis().incr(f"test:limits:runs:{name}"))
    _limits_time.sleep(seconds)
    return runs


class OverlapProbe(_LimitsBase):
    overlap_key = "probe:{group}"
    overlap_ttl = 6.0  # renewed every 2 s while running; free 6 s after a kill -9
    overlap_wait = 0.25


@_limits_shared_task(bind=True, base=OverlapProbe, name="tests.limits.overlap_probe")
def overlap_probe(self: OverlapProbe, group: str, seconds: float = 0.3) -> dict[str, _LimitsAny]:
    """Records when it held the lock, and its Celery retry count."""
    client = _limits_redis()
    started = _limits_time.time()
    client.set(f"test:limits:started:{self.request.id}", started)
    _limits_time.sleep(seconds)
    record = {
        "job": self.request.id,
        "start": started,
        "end": _limits_time.time(),
        "retries": self.request.retries,
    }
    client.rpush(f"test:limits:intervals:{group}", _limits_json.dumps(record))
    return record


class RateProbe(_LimitsBase):
    rate = "20/s"
    rate_limit_key = "probe-rate:{run}"
    # A short own limit leaves room in the test's 30 s visibility timeout for long waits.
    time_limit = 5
    soft_time_limit = 4


@_limits_shared_task(bind=True, base=RateProbe, name="tests.limits.rate_probe")
def rate_probe(self: RateProbe, run: str) -> None:
    """A ~10 ms job that records when it finished."""
    _limits_time.sleep(0.01)
    record = {"t": _limits_time.time(), "retries": self.request.retries}
    _limits_redis().rpush(f"test:limits:rate:{run}", _limits_json.dumps(record))


# --- effects ---
# Imports stay in this section: other groups append their own sections to this module.
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from celery import shared_task  # noqa: E402

from conveyor.core.effects import effect_once  # noqa: E402
from conveyor.core.redis_client import get_redis  # noqa: E402
from conveyor.core.task import ConveyorTask  # noqa: E402


@shared_task(
    bind=True,
    base=ConveyorTask,
    name="tests.effects.counted",
    # Quick retries: a run that meets a claim in progress comes back within a second or two.
    backoff_base=0.5,
    backoff_max=2.0,
    retry_max=10,
)
def effects_counted(
    self: ConveyorTask,
    key: str,
    counter: str,
    hold_seconds: float = 0.0,
    fail_attempts: int = 0,
) -> Any:
    """INCR `counter` in Redis at most once per `key`: the effect whose count the tests check.

    `<counter>:entered` counts runs that got into the effect; `<counter>:pid` is the process
    holding it, so a test can kill it mid-effect. The first `fail_attempts` attempts raise
    inside the effect, after entering it.
    """
    redis = get_redis()
    with effect_once(key) as effect:
        if not effect.done:
            redis.incr(f"{counter}:entered")
            redis.set(f"{counter}:pid", os.getpid())
            if self.request.retries < fail_attempts:
                raise ConnectionError(f"effect failed on attempt {self.request.retries + 1}")
            time.sleep(hold_seconds)
            effect.result = {"count": redis.incr(counter), "job_id": self.request.id}
    return effect.result


# --- images ---
# Flags in Redis, keyed by the image's owner and the variant, make a variant fail or slow:
#   test:images:fail:<owner>:<variant>   any value: fail permanently
#   test:images:flaky:<owner>:<variant>  a count: fail transiently that many times
#   test:images:slow:<owner>:<variant>   seconds to sleep (a worker can be killed meanwhile)
# test:images:started:<owner>:<variant> is set when a variant begins.
from conveyor.core.errors import PermanentError as _ImagesPermanent  # noqa: E402
from conveyor.core.errors import TransientError as _ImagesTransient  # noqa: E402
from conveyor.workloads.images.tasks import before_variant as _images_before_variant  # noqa: E402


@_images_before_variant.connect
def _images_test_hooks(sender: Any, image_id: str, variant: str, owner: str, **_: Any) -> None:
    redis = get_redis()
    suffix = f"{owner}:{variant}"
    redis.set(f"test:images:started:{suffix}", image_id, ex=600)
    if redis.exists(f"test:images:fail:{suffix}"):
        raise _ImagesPermanent(f"test asked {variant} to fail")
    if int(redis.decr(f"test:images:flaky:{suffix}")) >= 0:
        raise _ImagesTransient(f"test asked {variant} to fail once more")
    slow = redis.get(f"test:images:slow:{suffix}")
    if slow:
        time.sleep(float(slow))


# --- email ---
# A worker killed right after the SMTP server accepted a message (and the sent-record was
# committed), once per email, for recipients named kill-after-send@...
import os as _email_os  # noqa: E402
import signal as _email_signal  # noqa: E402

from conveyor.core.settings import get_settings as _email_settings  # noqa: E402
from conveyor.workloads.email.signals import email_sent as _email_sent  # noqa: E402


def _email_kill_after_send(
    sender: _LimitsAny, email_id: str, to: list[str], **_: _LimitsAny
) -> None:
    if not any(address.startswith("kill-after-send@") for address in to):
        return
    marker = _email_settings().data_dir / f"email-killed-{email_id}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    _email_os.killpg(_email_os.getpgrp(), _email_signal.SIGKILL)


_email_sent.connect(_email_kill_after_send, weak=False)


# --- payments ---
# A charge killed at an exact point: the worker's whole process group gets SIGKILL the
# first time a payment whose customer_id is "crash-<point>" reaches <point>.
import os as _payments_os  # noqa: E402
import signal as _payments_signal  # noqa: E402
from pathlib import Path as _PaymentsPath  # noqa: E402

from conveyor.workloads.payments import hooks as _payments_hooks  # noqa: E402

PAYMENTS_CRASH_DIR = "PAYMENTS_TEST_CRASH_DIR"


def _payments_crash_at(point: str) -> Any:
    def receiver(sender: Any = None, payment_id: str = "", customer_id: str = "", **_: Any) -> None:
        crash_dir = _payments_os.environ.get(PAYMENTS_CRASH_DIR)
        if not crash_dir or customer_id != f"crash-{point}":
            return
        try:
            (_PaymentsPath(crash_dir) / f"{payment_id}-{point}").touch(exist_ok=False)
        except FileExistsError:
            return  # crashed here once already: let it through
        _payments_os.killpg(_payments_os.getpgrp(), _payments_signal.SIGKILL)

    return receiver


for _point, _signal in (
    ("requested", _payments_hooks.charge_requested),
    ("returned", _payments_hooks.charge_returned),
    ("settling", _payments_hooks.charge_settling),
):
    _signal.connect(_payments_crash_at(_point), weak=False)


# --- continuing later from inside a running job ---
from celery import shared_task as _later_shared_task  # noqa: E402

from conveyor.core.task import ConveyorTask as _LaterBase  # noqa: E402


@_later_shared_task(bind=True, base=_LaterBase, name="tests.later.in_parts")
def in_parts(self: _LaterBase, left: int, done: int = 0) -> dict[str, int]:
    """Does one part per run and hands the rest back, as a task waiting on a quota would."""
    if left > 0:
        self.continue_later({"left": left - 1, "done": done + 1}, 0.1, "waiting for a quota")
    return {"done": done}


# --- the job ledger's states ---
from celery import shared_task as _states_shared_task  # noqa: E402

from conveyor.core.errors import TransientError as _StatesTransient  # noqa: E402
from conveyor.core.task import ConveyorTask as _StatesBase  # noqa: E402


class SteadyRetry(_StatesBase):
    """Retries after a fixed delay: full jitter could make the retrying state last 0 ms."""

    def retry_delay(self, retries: int) -> float:
        return 1.5


@_states_shared_task(bind=True, base=SteadyRetry, name="tests.states.fail_once")
def fail_once(self: SteadyRetry) -> int:
    attempt = self.request.retries + 1
    if attempt == 1:
        raise _StatesTransient("first attempt fails")
    return attempt


# --- schedules ---
import time as _schedules_time  # noqa: E402

from celery import shared_task as _schedules_shared_task  # noqa: E402

from conveyor.core.redis_client import get_redis as _schedules_redis  # noqa: E402
from conveyor.core.task import ConveyorTask as _SchedulesBase  # noqa: E402


@_schedules_shared_task(bind=True, base=_SchedulesBase, name="tests.schedules.tick")
def schedule_tick(self: _SchedulesBase, group: str) -> None:
    """Counts its runs per job id, so a test can tell one run per slot from two."""
    _schedules_redis().hincrby(f"test:schedules:runs:{group}", str(self.request.id), 1)


@_schedules_shared_task(bind=True, base=_SchedulesBase, name="tests.schedules.slow")
def schedule_slow(self: _SchedulesBase, group: str, seconds: float) -> None:
    """A run that outlasts its schedule's interval; records when it ran."""
    started = _schedules_time.time()
    _schedules_time.sleep(seconds)
    interval = f"{started} {_schedules_time.time()}"
    _schedules_redis().rpush(f"test:schedules:intervals:{group}", interval)


# --- dashboard ---
import pathlib as _dashboard_pathlib  # noqa: E402

from celery import shared_task as _dashboard_shared_task  # noqa: E402

from conveyor.core.errors import PermanentError as _DashboardPermanent  # noqa: E402
from conveyor.core.task import ConveyorTask as _DashboardBase  # noqa: E402


@_dashboard_shared_task(bind=True, base=_DashboardBase, name="tests.dashboard.needs_file")
def needs_file(self: _DashboardBase, path: str) -> str:
    """Dead at once while `path` is missing; its replay succeeds once the file is there, as a
    job does whose cause an operator fixed."""
    self.report_progress(1, 2, "looking for the file")
    if not _dashboard_pathlib.Path(path).exists():
        raise _DashboardPermanent(f"{path} does not exist: create it, then replay")
    self.report_progress(2, 2, "found it")
    return "found"
