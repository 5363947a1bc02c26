"""Celery tasks of the scraping workload (queue `scraping`): thin adapters over `crawler`.

A crawl is worked on by CONVEYOR_SCRAPE_CRAWL_JOBS jobs at once: its own job (part 0),
which starts the others. Each runs for a slice of time (CONVEYOR_SCRAPE_SLICE_SECONDS, within
the task time limit) and then continues as a fresh delivery: the frontier is in the
database, so a worker lost mid-crawl costs only the pages it had claimed, which another job
takes over when their lease runs out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celery import shared_task
from sqlalchemy import update

from conveyor.core.db import session_scope
from conveyor.core.effects import run_once
from conveyor.core.errors import JobCancelled, PermanentError
from conveyor.core.jobs import Submission, submit
from conveyor.core.models import utcnow
from conveyor.core.netguard import NetPolicy
from conveyor.core.redis_client import get_redis
from conveyor.core.settings import get_settings, section
from conveyor.core.task import ConveyorTask
from conveyor.workloads.scraping import service
from conveyor.workloads.scraping.crawler import Crawler
from conveyor.workloads.scraping.frontier import normalize, url_hash
from conveyor.workloads.scraping.models import (
    FINISHED_CRAWL,
    Crawl,
    CrawlPage,
    CrawlStatus,
    PageStatus,
)
from conveyor.workloads.scraping.settings import ScrapingSettings
from conveyor.workloads.scraping.store import PAGE_TASK, lock


class CrawlTask(ConveyorTask):
    # A crawl's failures are its pages' (recorded per page); the job itself retries only
    # for trouble with the database or Redis.
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        crawl_id = (kwargs or {}).get("crawl_id")
        if not crawl_id or isinstance(exc, JobCancelled) or (kwargs or {}).get("part", 0):
            return
        with session_scope() as session:
            crawl = session.get(Crawl, crawl_id)
            if crawl is not None and crawl.status not in FINISHED_CRAWL:
                crawl.status = CrawlStatus.FAILED
                crawl.error = f"{type(exc).__name__}: {exc}"[:2000]
                crawl.finished_at = utcnow()


def summary(crawl_id: str) -> dict[str, Any]:
    with session_scope() as session:
        crawl = session.get(Crawl, crawl_id)
        if crawl is None:
            return {"crawl_id": crawl_id}
        return {
            "crawl_id": crawl.id,
            "status": crawl.status,
            "pages_fetched": crawl.pages_fetched,
            "pages_failed": crawl.pages_failed,
            "pages_skipped_robots": crawl.pages_skipped_robots,
            "pages_skipped": crawl.pages_skipped,
            "items": crawl.items,
        }


def _submit_parts(crawl_id: str, owner: str | None, job_ids: list[str]) -> list[str]:
    for part, job_id in enumerate(job_ids[1:], 1):
        submit(
            Submission(
                task_name=service.CRAWL_TASK,
                kwargs={"crawl_id": crawl_id, "part": part},
                owner=owner,
                job_id=job_id,
            )
        )
    return job_ids[1:]


def _progress(task: ConveyorTask, crawl_id: str) -> None:
    with session_scope() as session:
        crawl = session.get(Crawl, crawl_id)
        if crawl is None:
            return
        waiting = service.in_progress(session, crawl_id)
        done = crawl.pages_fetched + crawl.pages_failed + crawl.pages_skipped_robots
        left = waiting["pages_queued"] + waiting["pages_in_flight"]
        message = (
            f"{crawl.pages_fetched} fetched, {crawl.pages_failed} failed, "
            f"{crawl.pages_skipped_robots} skipped by robots.txt, {left} to go"
        )
    task.report_progress(done, min(done + left, crawl.max_pages) or None, message)


def _run(task: ConveyorTask, crawl_id: str, part: int) -> dict[str, Any]:
    settings = get_settings()
    scraping = section(ScrapingSettings)
    with session_scope() as session:
        crawl = session.get(Crawl, crawl_id)
        if crawl is None:
            raise PermanentError(f"crawl_id: there is no crawl {crawl_id!r}")
        if crawl.status in FINISHED_CRAWL:
            return summary(crawl_id)
        if crawl.status == CrawlStatus.QUEUED:
            crawl.status, crawl.started_at = CrawlStatus.RUNNING, utcnow()
        info = service.info(crawl)
        owner = crawl.owner
        proxies = service.load_proxies(session, scraping)
        parts = 1 if crawl.kind == "scrape" else scraping.scrape_crawl_jobs
        job_ids = service.part_job_ids(crawl, parts)
    if part == 0 and parts > 1:
        run_once(f"crawl-parts:{crawl_id}", _submit_parts, crawl_id, owner, job_ids)
    crawler = Crawler(
        info,
        scraping=scraping,
        client=get_redis(),
        proxies=proxies,
        policy=NetPolicy.from_settings(settings),
        progress=lambda: _progress(task, crawl_id),
    )
    # A slice ends well inside the soft time limit, so the job never meets it.
    budget = min(scraping.scrape_slice_seconds, settings.task_soft_time_limit * 0.6)
    if not asyncio.run(crawler.run(time.monotonic() + budget)):
        kwargs = {"crawl_id": crawl_id, "part": part}
        task.continue_later(kwargs, 0.05, "crawling: continues in a fresh delivery")
    _progress(task, crawl_id)  # the final figures, for whoever watches the job
    return summary(crawl_id)


@shared_task(bind=True, base=CrawlTask, name=service.CRAWL_TASK)
def crawl(self: CrawlTask, crawl_id: str, part: int = 0) -> dict[str, Any]:
    """Crawl politely until the frontier is empty; `part` > 0 are the helpers part 0 starts."""
    return _run(self, crawl_id, part)


@shared_task(bind=True, base=CrawlTask, name=PAGE_TASK)
def page(self: CrawlTask, crawl_id: str, url: str) -> dict[str, Any]:
    """Fetch one page of a crawl again (a replayed dead letter): back in its frontier with
    a fresh set of attempts, the crawl reopened until it is done."""
    try:
        key = url_hash(normalize(url))
    except ValueError:
        raise PermanentError(f"url: {url!r} is not an http(s) URL") from None
    with session_scope() as session:
        crawl = session.get(Crawl, crawl_id)
        if crawl is None:
            raise PermanentError(f"crawl_id: there is no crawl {crawl_id!r}")
        if crawl.status == CrawlStatus.CANCELLED:
            return summary(crawl_id)
        lock(session, crawl_id)
        reopened = session.execute(
            update(CrawlPage)
            .where(
                CrawlPage.crawl_id == crawl_id,
                CrawlPage.url_hash == key,
                CrawlPage.status == PageStatus.FAILED,
            )
            .values(status=PageStatus.QUEUED, attempts=0, deferrals=0, next_at=utcnow(), error=None)
        )
        if reopened.rowcount:  # type: ignore[attr-defined]
            crawl.pages_failed -= 1
            crawl.status, crawl.finished_at = CrawlStatus.RUNNING, None
    return _run(self, crawl_id, 0)
