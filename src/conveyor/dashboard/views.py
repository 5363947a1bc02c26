"""What each dashboard page shows, built from the ledger, the job figures and Redis.

A view's builder makes the template context from the query string; the page renders it in
full, and its live stream renders the same context's region again as things change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conveyor.core import heartbeat, job_figures, queue_control, workloads
from conveyor.core.dead_letters import get as get_dead_letter
from conveyor.core.ledger import BadCursor, as_utc, get_job
from conveyor.core.models import TERMINAL_STATES, Job, JobState, utcnow
from conveyor.core.redis_client import get_redis
from conveyor.core.schedules import service as schedules
from conveyor.core.search import (
    DeadLetterFilter,
    JobFilter,
    attempts,
    children,
    count_dead_letters,
    search_dead_letters,
    search_jobs,
    tags,
)
from conveyor.core.settings import get_settings
from conveyor.dashboard.sessions import SignedIn
from conveyor.webhooks import service as webhooks

Params = Mapping[str, str]
PAGE_SIZE = 50
STATES = [state.value for state in JobState]
OUTCOMES = ("succeeded", "failed", "retried", "dead")


@dataclass(frozen=True)
class View:
    template: str
    build: Callable[[Session, SignedIn, Params], dict[str, Any]]
    admin: bool = False
    # Streams that also wake on a job's own events, not only on the timer.
    follows_job: bool = False


def _text(params: Params, name: str, longest: int = 200) -> str | None:
    value = (params.get(name) or "").strip()
    if len(value) > longest:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: too long")
    return value or None


def _time(params: Params, name: str) -> datetime | None:
    value = _text(params, name, 40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{name}: not a date or time; use e.g. 2026-11-28 or 2026-11-28T14:30",
        ) from None
    return as_utc(parsed)


def _choice(params: Params, name: str, allowed: list[str]) -> str | None:
    value = _text(params, name, 64)
    if value is not None and value not in allowed:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: one of {', '.join(allowed)}"
        )
    return value


def _chart(title: str, points: list[Any], step_minutes: int) -> dict[str, Any]:
    return {
        "title": title,
        "step_minutes": step_minutes,
        "x": [int(point.at.timestamp()) for point in points],
        "series": {name: [getattr(point, name) for point in points] for name in OUTCOMES},
    }


def _latency_chart(title: str, points: list[Any], step_minutes: int) -> dict[str, Any]:
    return {
        "title": title,
        "step_minutes": step_minutes,
        "x": [int(point.at.timestamp()) for point in points],
        "series": {
            name: [getattr(point, name) for point in points]
            for name in ("wait_p50", "wait_p95", "run_p50", "run_p95")
        },
    }


# The last day's figures move by 15-minute steps: read once a minute per process, not on
# every render of every open overview (1,440 rows per queue each time).
DAY_FIGURES_SECONDS = 60.0
_day_cache: dict[str | None, tuple[float, Any]] = {}
_day_lock = threading.Lock()


def _day_figures(session: Session, queue: str | None) -> Any:
    with _day_lock:
        kept = _day_cache.get(queue)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
    day = utcnow() - timedelta(days=1)
    figures = (
        _chart("Jobs per 15 minutes, last day", job_figures.series(
            session, since=day, step_minutes=15, queue=queue), 15),
        _latency_chart("Wait and run time, last day", job_figures.latency_series(
            session, since=day, step_minutes=15, queue=queue), 15),
        job_figures.latency(session, since=day),
    )  # fmt: skip
    with _day_lock:
        _day_cache[queue] = (time.monotonic() + DAY_FIGURES_SECONDS, figures)
    return figures


def overview(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    now = utcnow()
    if not who.is_admin:
        since = now - timedelta(days=1)
        by_state = session.execute(
            select(Job.state, func.count())
            .where(Job.owner == who.owner, Job.created_at >= since)
            .group_by(Job.state)
        ).all()
        rows, _ = search_jobs(session, JobFilter(owner=who.owner), limit=10)
        return {"mine": {str(state): int(count) for state, count in by_state}, "jobs": rows}
    declared = workloads.queues(get_settings())
    queue = _choice(params, "queue", declared)
    hour = now - timedelta(hours=1)
    day_count, day_latency, latency_day = _day_figures(session, queue)
    charts = [
        _chart("Jobs per minute, last hour", job_figures.series(
            session, since=hour, step_minutes=1, queue=queue), 1),
        day_count,
        _latency_chart("Wait and run time, last hour", job_figures.latency_series(
            session, since=hour, step_minutes=1, queue=queue), 1),
        day_latency,
    ]  # fmt: skip
    return {
        "queue": queue,
        "declared": declared,
        "charts": charts,
        "latency_hour": job_figures.latency(session, since=hour),
        "latency_day": latency_day,
        "queues": queue_control.queue_overview(session, get_redis()),
        "workers_online": len(heartbeat.live_workers()),
        "dead_letters": search_dead_letters(session, DeadLetterFilter(), limit=5)[0],
    }


def queues(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    return {
        "queues": queue_control.queue_overview(session, get_redis()),
        "latency": job_figures.latency(session, since=utcnow() - timedelta(hours=1)),
    }


def workers(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    shown = []
    for body in heartbeat.known_workers(get_redis()):
        # Beats carry epoch seconds; the page shows an age and a span.
        last = float(body.get("stopped_at") or body["at"])
        started = body.get("started_at")
        shown.append(
            {
                **body,
                "last_seen": datetime.fromtimestamp(last, UTC),
                "uptime": last - float(started) if started else None,
            }
        )
    return {"workers": shown}


def job_filter(who: SignedIn, params: Params) -> JobFilter:
    return JobFilter(
        state=_choice(params, "state", STATES),
        queue=_text(params, "queue", 64),
        task=_text(params, "task"),
        # A plain key sees its own jobs whatever it asks for.
        owner=_text(params, "owner", 120) if who.is_admin else who.owner,
        tag=_text(params, "tag", 100),
        created_from=_time(params, "created_from"),
        created_to=_time(params, "created_to"),
    )


def jobs_list(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    where = job_filter(who, params)
    cursor = _text(params, "cursor", 500)
    try:
        rows, next_cursor = search_jobs(session, where, limit=PAGE_SIZE, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    shown = where.active()
    if not who.is_admin:
        shown.pop("owner", None)
    return {
        "jobs": rows,
        "filters": shown,
        "next_cursor": next_cursor,
        "paged": cursor is not None,
        "states": STATES,
        "queue_names": workloads.queues(get_settings()),
    }


def job_detail(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    job_id = _text(params, "job_id", 64) or ""
    job = get_job(session, job_id, None if who.is_admin else who.owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    parent = get_job(session, job.parent_id, None) if job.parent_id else None
    return {
        "job": job,
        "active": job.state not in TERMINAL_STATES,
        "attempts": attempts(session, job.id),
        "tags": tags(session, job.id),
        "parent": parent,
        "children": children(session, job.id),
    }


def letter_filter(params: Params, *, before: datetime | None = None) -> DeadLetterFilter:
    return DeadLetterFilter(
        task=_text(params, "task"),
        queue=_text(params, "queue", 64),
        error_type=_text(params, "error_type"),
        reason=_text(params, "reason", 32),
        owner=_text(params, "owner", 120),
        replayed=_choice(params, "replayed", ["yes", "no"]),
        failed_from=_time(params, "failed_from"),
        failed_before=before or _time(params, "failed_before"),
        text=_text(params, "text"),
    )


def dead_letters_list(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    where = letter_filter(params)
    cursor = _text(params, "cursor", 500)
    try:
        rows, next_cursor = search_dead_letters(session, where, limit=PAGE_SIZE, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return {
        "letters": rows,
        "filters": where.to_json(),
        "next_cursor": next_cursor,
        "paged": cursor is not None,
    }


def dead_letter_detail(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    letter = get_dead_letter(session, _text(params, "letter_id", 64) or "")
    if letter is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "dead letter not found")
    return {"letter": letter}


def replay_confirm(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    # Fixed to what failed before now (later letters are not included), and to letters not
    # replayed yet: a replay that failed again is a dead letter of its own.
    where = replace(letter_filter(params, before=utcnow()), replayed="no")
    return {"filters": where.to_json(), "count": count_dead_letters(session, where)}


def schedules_list(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    scope = None if who.is_admin else who.owner
    return {"schedules": schedules.list_schedules(session, scope, limit=500)}


def webhooks_list(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    scope = None if who.is_admin else who.owner
    endpoints = webhooks.list_endpoints(session, scope)
    return {
        "endpoints": [
            (endpoint, webhooks.list_deliveries(session, endpoint.id, limit=5))
            for endpoint in endpoints
        ]
    }


def payments_enabled() -> bool:
    return "payments" in {workload.name for workload in workloads.enabled(get_settings())}


def payments_review(session: Session, who: SignedIn, params: Params) -> dict[str, Any]:
    if not payments_enabled():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the payments workload is not enabled")
    from conveyor.workloads.payments import service as payments
    from conveyor.workloads.payments.models import PaymentState

    rows, _ = payments.list_payments(
        session, owner=None, customer_id=None, state=PaymentState.REQUIRES_REVIEW, limit=200,
        cursor=None,
    )  # fmt: skip
    return {"payments": rows}


VIEWS: dict[str, View] = {
    "overview": View("overview.html", overview),
    "queues": View("queues.html", queues, admin=True),
    "workers": View("workers.html", workers, admin=True),
    "jobs": View("jobs.html", jobs_list),
    "job": View("job.html", job_detail, follows_job=True),
    "dead-letters": View("dead_letters.html", dead_letters_list, admin=True),
    "dead-letter": View("dead_letter.html", dead_letter_detail, admin=True),
    "replay-matching": View("replay_confirm.html", replay_confirm, admin=True),
    "schedules": View("schedules.html", schedules_list),
    "webhooks": View("webhooks.html", webhooks_list),
    "payments-review": View("payments_review.html", payments_review, admin=True),
}
