"""The naive crawler bench/scraping.py compares Conveyor's against: one Celery task per URL.

`fetch(url)` does a blocking `requests.get`, finds the page's links with a regular expression
and enqueues every link to the same host that no task has claimed yet (a Redis set). The only
politeness is Celery's `rate_limit` on the task, which the worker's consumer enforces for the
whole worker (one token bucket per task type and worker instance, whatever its concurrency):
a rate for all domains together, none per domain.

`BENCH_REDIS_URL` is the broker and the bookkeeping database; `BENCH_RATE_LIMIT` the task's
rate_limit ("2/s"). A `worker_ready` handler stores the time the worker became ready.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import redis
import requests
from celery import Celery, signals

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT", "2/s")

FETCH_TASK = "bench.scrape.fetch"
SEEN_KEY = "bench:scrape:seen"
FETCHED_KEY = "bench:scrape:fetched"
ERRORS_KEY = "bench:scrape:errors"
READY_KEY = "bench:scrape:ready"

HREF = re.compile(r"""href\s*=\s*["']([^"'#]+)""", re.IGNORECASE)

app = Celery("bench_scrape_naive", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_client: redis.Redis | None = None
_client_pid = 0


def bench_redis() -> redis.Redis:
    """One connection per process: a forked pool child must not share its parent's socket."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
        _client_pid = os.getpid()
    return _client


@signals.worker_ready.connect(weak=False)
def _mark_ready(**_: Any) -> None:
    bench_redis().set(READY_KEY, repr(time.time()))


@app.task(name=FETCH_TASK, rate_limit=RATE_LIMIT)
def fetch(url: str) -> None:
    client = bench_redis()
    try:
        response = requests.get(url, timeout=10)
    except requests.RequestException:
        client.incr(ERRORS_KEY)
        return
    if response.status_code != 200:
        client.incr(ERRORS_KEY)
        return
    host = urlsplit(url).netloc
    links = []
    for href in HREF.findall(response.text):
        link = urljoin(url, href)
        if urlsplit(link).netloc == host:
            links.append(link)
    for link in dict.fromkeys(links):
        if client.sadd(SEEN_KEY, link):
            fetch.delay(link)
    client.incr(FETCHED_KEY)


celery = app
