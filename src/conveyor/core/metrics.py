"""Prometheus metrics for the API process, plus ledger and queue gauges read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from conveyor.core.db import session_scope
from conveyor.core.models import Job
from conveyor.core.redis_client import get_redis
from conveyor.core.settings import QUEUES, get_settings

log = logging.getLogger(__name__)

registry = CollectorRegistry(auto_describe=True)

http_requests = Counter(
    "conveyor_http_requests_total",
    "HTTP requests answered by the API.",
    ["method", "route", "status"],
    registry=registry,
)
http_latency = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    registry=registry,
)


class LedgerCollector(Collector):
    """Jobs by state and queue from the ledger, and queue depths from the broker."""

    def describe(self) -> Iterator[Metric]:
        # Without this the registry would call collect(), and query the database, at import.
        return iter(())

    def collect(self) -> Iterator[Metric]:
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
        if get_settings().broker.startswith(("redis://", "rediss://")):
            try:
                client = get_redis()
                for queue in QUEUES:
                    depth.add_metric([queue], client.llen(queue))
            except Exception as exc:
                log.warning("queue depth unavailable: %s", exc)
        yield depth


registry.register(LedgerCollector())
