"""Politeness shared by every worker: per-domain rate and concurrency, Retry-After pauses.

All state lives in Redis, so the limits hold across any number of crawl jobs, worker
processes and machines:

- the rate: GCRA buckets (`core.rate_limit.take_all`), one per domain at the domain's rate
  (CONVEYOR_SCRAPE_DOMAIN_RATE(S), slowed to robots.txt's Crawl-delay), one per crawl and
  domain when the crawl asked for a lower rate, one per proxy; all taken at once or none;
- the concurrency: a leased semaphore per domain (`core.semaphore`);
- a pause per domain after 429 or 503 with Retry-After: nobody asks that domain again
  before the server said to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis

from conveyor.core.rate_limit import Bucket, Rate, parse_rate, take_all
from conveyor.core.semaphore import Semaphore
from conveyor.workloads.scraping.settings import ScrapingSettings

PAUSE_PREFIX = "conveyor:scrape:pause:"
# Requests are booked this much further apart than the rate allows: a request leaves a
# little after its booked time (a busy process, a new connection), and one that leaves late
# must still not land within the rate's interval of the next.
SPACING_MARGIN = 1.05


def effective_rate(rate: Rate, crawl_delay: float | None) -> Rate:
    """The domain's rate, never faster than one request per Crawl-delay."""
    if crawl_delay and crawl_delay > rate.interval:
        return Rate(limit=1, period=float(crawl_delay))
    return rate


def _spaced(rate: Rate) -> Rate:
    return Rate(rate.limit, rate.period * SPACING_MARGIN, rate.burst)


@dataclass(frozen=True)
class Slot:
    """A place to send one request: go after `wait` seconds, then `release()` the place."""

    wait: float
    semaphore: Semaphore
    holder: str

    def release(self) -> None:
        self.semaphore.release(self.holder)


@dataclass(frozen=True)
class Refused:
    """No place now: ask again in `retry_after` seconds; `why` names the limit."""

    retry_after: float
    why: str


class Politeness:
    def __init__(
        self,
        client: redis.Redis,
        settings: ScrapingSettings,
        *,
        crawl_id: str,
        crawl_rate: str | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.crawl_id = crawl_id
        self.crawl_rate = parse_rate(crawl_rate) if crawl_rate else None
        self.proxy_rate = parse_rate(settings.scrape_proxy_rate)
        # A holder that dies frees its place after the longest a request may take.
        self.lease = settings.scrape_timeout_seconds + 10

    def buckets(self, domain: str, crawl_delay: float | None, proxy_id: str | None) -> list[Bucket]:
        rate = _spaced(effective_rate(self.settings.rate_for(domain), crawl_delay))
        buckets = [Bucket(f"scrape:domain:{domain}", rate)]
        if self.crawl_rate is not None:
            crawl_rate = _spaced(effective_rate(self.crawl_rate, crawl_delay))
            buckets.append(Bucket(f"scrape:crawl:{self.crawl_id}:{domain}", crawl_rate))
        if proxy_id is not None:
            buckets.append(Bucket(f"scrape:proxy:{proxy_id}", self.proxy_rate))
        return buckets

    def space_after(self, domain: str, seconds: float) -> None:
        """The next request to `domain` goes at least `seconds` after the last one: for a
        Crawl-delay learnt from the robots.txt just fetched at the domain's plain rate."""
        rate = _spaced(Rate(1, seconds))
        bucket = Bucket(f"scrape:domain:{domain}", rate, horizon=rate.period * 2)
        take_all([bucket], client=self.client)

    def paused_for(self, domain: str) -> float:
        """Seconds left of the domain's Retry-After pause (0 when none)."""
        left = int(self.client.pttl(PAUSE_PREFIX + domain))
        return left / 1000 if left > 0 else 0.0

    def pause(self, domain: str, seconds: float) -> None:
        """Hold every request to `domain` for `seconds` (a shorter pause never shortens it)."""
        if seconds > self.paused_for(domain):
            self.client.set(PAUSE_PREFIX + domain, "1", px=max(1, round(seconds * 1000)))

    def try_take(
        self,
        domain: str,
        holder: str,
        *,
        crawl_delay: float | None,
        proxy_id: str | None,
        horizon: float,
    ) -> Slot | Refused:
        """A place for one request to `domain`, booked at most `horizon` seconds ahead."""
        paused = self.paused_for(domain)
        if paused > 0:
            return Refused(paused, "retry-after")
        semaphore = Semaphore(
            f"scrape:{domain}",
            limit=self.settings.scrape_domain_concurrency,
            lease=self.lease,
            client=self.client,
        )
        if not semaphore.acquire(holder):
            return Refused(0.2, "concurrency")
        buckets = [
            Bucket(bucket.key, bucket.rate, horizon=horizon)
            for bucket in self.buckets(domain, crawl_delay, proxy_id)
        ]
        decision = take_all(buckets, client=self.client)
        if decision.allowed or decision.reserved:
            return Slot(decision.retry_after, semaphore, holder)
        semaphore.release(holder)
        why = "proxy rate" if (decision.refused_by or "").startswith("scrape:proxy:") else "rate"
        return Refused(max(decision.retry_after, 0.01), why)

    async def take(
        self,
        domain: str,
        holder: str,
        *,
        crawl_delay: float | None,
        proxy_id: str | None,
        deadline: float,
    ) -> Slot | Refused:
        """Wait (asynchronously) for a place, until `deadline` (time.monotonic())."""
        while True:
            answer = self.try_take(
                domain, holder, crawl_delay=crawl_delay, proxy_id=proxy_id, horizon=1.0
            )
            if isinstance(answer, Slot):
                return answer
            if time.monotonic() + answer.retry_after > deadline:
                return answer
            await asyncio.sleep(answer.retry_after)
