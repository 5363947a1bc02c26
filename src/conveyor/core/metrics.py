"""Prometheus metrics, shared by every process on a machine.

Prefork workers run tasks in child processes, so each process writes its samples to files in
one directory (prometheus-client's multiprocess mode) and the exposition aggregates them. The
directory must be known before prometheus_client is imported: see `metrics_setup`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.core.metrics_setup import ENV_VAR

log = logging.getLogger(__name__)
MULTIPROCESS = bool(os.environ.get(ENV_VAR))
# In multiprocess mode samples live in files that the exposition reads through
# MultiProcessCollector; registering the metrics too would count them twice.
_local = None if MULTIPROCESS else CollectorRegistry(auto_describe=True)

jobs_total = Counter(
    "conveyor_jobs_total",
    "Job attempts by task, queue and outcome (succeeded, retried, dead, cancelled).",
    ["task", "queue", "outcome"],
    registry=_local,
)
job_runtime = Histogram(
    "conveyor_job_runtime_seconds",
    "Time a job attempt ran, by task and queue.",
    ["task", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=_local,
)
queue_wait = Histogram(
    "conveyor_job_wait_seconds",
    "Time a job waited in its queue before a worker started it (start - enqueue).",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=_local,
)
queue_wait_exceeded = Counter(
    "conveyor_queue_wait_exceeded_total",
    "Jobs that waited longer than CONVEYOR_QUEUE_WAIT_THRESHOLD_SECONDS.",
    ["queue"],
    registry=_local,
)
dead_letters_total = Counter(
    "conveyor_dead_letters_total",
    "Jobs moved to the dead-letter store, by task and reason.",
    ["task", "reason"],
    registry=_local,
)
rate_limit_delays = Histogram(
    "conveyor_rate_limit_delay_seconds",
    "Delays imposed on jobs by rate limits and non-overlap locks, by task and cause.",
    ["task", "cause"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=_local,
)
webhook_deliveries = Counter(
    "conveyor_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, failed, refused).",
    ["outcome"],
    registry=_local,
)
http_requests = Counter(
    "conveyor_http_requests_total",
    "HTTP requests answered by the API.",
    ["method", "route", "status"],
    registry=_local,
)
http_latency = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    registry=_local,
)


class LedgerCollector(Collector):
    """Jobs by state and queue from the ledger, and queue depths from the broker."""

    def describe(self) -> Iterator[Metric]:
        # Without this the registry would call collect(), and query the database, at import.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from conveyor.core import brokers
        from conveyor.core.db import session_scope
        from conveyor.core.models import Job
        from conveyor.core.settings import get_settings
        from conveyor.core.workloads import queues

        jobs = GaugeMetricFamily(
            "conveyor_jobs", "Jobs in the ledger by queue and state.", labels=["queue", "state"]
        )
        try:
            with session_scope() as session:
                rows = session.execute(
                    select(Job.queue, Job.state, func.count()).group_by(Job.queue, Job.state)
                ).all()
            for queue, state, count in rows:
                jobs.add_metric([queue, state], count)
        except Exception as exc:
            log.warning("ledger metrics unavailable: %s", exc)
        yield jobs

        depth = GaugeMetricFamily(
            "conveyor_queue_depth", "Messages waiting in each queue.", labels=["queue"]
        )
        try:
            names = queues(get_settings())
            for queue, count in brokers.queue_depths(names, get_settings()).items():
                depth.add_metric([queue], count)
        except Exception as exc:
            log.warning("queue depth unavailable: %s", exc)
        yield depth


def exposition() -> bytes:
    """Every process's samples on this machine, plus the ledger and queue gauges."""
    registry = CollectorRegistry(auto_describe=True)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(LedgerCollector())
    output = generate_latest(registry)
    if _local is not None:
        output += generate_latest(_local)
    return output


def multiprocess_registry() -> CollectorRegistry:
    """What a worker's own metrics endpoint serves: every process of this machine."""
    registry = CollectorRegistry(auto_describe=True)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    elif _local is not None:
        return _local
    return registry


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
