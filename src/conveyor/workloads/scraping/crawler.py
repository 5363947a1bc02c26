"""A crawl job's engine: many pages in flight at once (asyncio), each one polite.

One `Crawler.run` claims due pages from the frontier (`store`), visits each in its own
coroutine and records what came of it, until the crawl is finished or the slice of time is
over. Several jobs may run one crawl at once, on any workers: the frontier and every limit
are shared (database, Redis), so they divide the work without agreeing on anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack

import httpx
import redis
from protego import Protego
from sqlalchemy.exc import DBAPIError

from conveyor.core.db import session_scope
from conveyor.core.netguard import BlockedDestination, NetPolicy
from conveyor.core.netguard_async import AsyncGuardedTransport
from conveyor.workloads.scraping import fetch, store
from conveyor.workloads.scraping.extract import Rule, extract, parse_rules
from conveyor.workloads.scraping.frontier import BadUrl, host_of, normalize, origin_of
from conveyor.workloads.scraping.models import Crawl, CrawlStatus, PageValidators
from conveyor.workloads.scraping.politeness import Politeness, Refused
from conveyor.workloads.scraping.proxies import NoProxy, Proxy, ProxyPool
from conveyor.workloads.scraping.robots import Robots, RobotsAnswer, RobotsCache, agent_token
from conveyor.workloads.scraping.settings import ScrapingSettings
from conveyor.workloads.scraping.store import CrawlInfo, Kind, Outcome, PageRef

log = logging.getLogger(__name__)

# A claimed page must be recorded within this long, or another job may take it over.
LEASE_EXTRA_SECONDS = 60.0
# How far ahead a page may book its domain's next free slot instead of going back in line.
BOOKING_HORIZON = 1.0
# A page told to wait this long at most for its domain's turn waits in place.
WAIT_IN_PLACE = 5.0
RECORD_ATTEMPTS = 3
# A booked request this late (the process was busy) books again rather than go late.
LATE_SLOT_SECONDS = 0.02
# A page banned through a proxy tries another proxy, without spending an attempt, until it
# has waited this often (for any reason): then the answer is taken as the page's own.
PROXY_BANS_PER_PAGE = store.MAX_DEFERRALS // 2
ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
PROXY_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Crawler:
    def __init__(
        self,
        crawl: CrawlInfo,
        *,
        scraping: ScrapingSettings,
        client: redis.Redis,
        proxies: list[Proxy],
        policy: NetPolicy,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.crawl = crawl
        self.settings = scraping
        self.rules: dict[str, Rule] = parse_rules(crawl.extract)
        self.polite = Politeness(client, scraping, crawl_id=crawl.id, crawl_rate=crawl.rate)
        self.pool = ProxyPool(
            client,
            proxies,
            rotation=scraping.scrape_proxy_rotation,
            cooldown=scraping.scrape_proxy_cooldown_seconds,
        )
        self.robots = RobotsCache(
            client, self._fetch_robots, ttl=scraping.scrape_robots_ttl_seconds
        )
        self.agent = agent_token(scraping.scrape_user_agent)
        self.policy = policy
        self.progress = progress
        self.ban_markers = [marker.encode() for marker in scraping.ban_markers()]
        self.lease = scraping.scrape_timeout_seconds + LEASE_EXTRA_SECONDS
        self._clients: dict[str | None, httpx.AsyncClient] = {}
        self._deadline = time.monotonic()
        self._stack = AsyncExitStack()

    # --- clients -------------------------------------------------------------------------

    async def _client(self, proxy: Proxy | None) -> httpx.AsyncClient:
        key = proxy.id if proxy else None
        client = self._clients.get(key)
        if client is None:
            transport = AsyncGuardedTransport(self.policy, proxy_url=proxy.url if proxy else None)
            client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
            self._clients[key] = await self._stack.enter_async_context(client)
        return client

    # --- the loop ------------------------------------------------------------------------

    async def run(self, deadline: float) -> bool:
        """Work until the crawl is finished (True) or `deadline` (time.monotonic()) passes."""
        self._deadline = deadline
        async with self._stack:
            return await self._loop(deadline)

    async def _loop(self, deadline: float) -> bool:
        in_flight: set[asyncio.Task[None]] = set()
        limit = self.settings.scrape_requests_in_flight
        next_progress = next_claim = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_progress and self.progress is not None:
                    # On this thread: the task's request (its job id) is thread-local.
                    self.progress()  # raises JobCancelled when the job was cancelled
                    next_progress = now + 2.0
                if now < deadline and now >= next_claim and len(in_flight) < limit:
                    want = limit - len(in_flight)
                    pages = await asyncio.to_thread(self._claim, want)
                    for page in pages:
                        in_flight.add(asyncio.create_task(self._visit(page)))
                    # Fewer than asked: nothing more is due now; look again a little later
                    # rather than after every page (each claim is a write under the lock).
                    next_claim = now + (0.2 if len(pages) < want else 0.0)
                if in_flight:
                    done, in_flight = await asyncio.wait(
                        in_flight, timeout=0.2, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()  # a bug in a visit ends the run loudly
                    continue
                if now >= deadline:
                    return False
                finished, stopped = await asyncio.to_thread(self._state)
                if finished:
                    await asyncio.to_thread(self._finish)
                    return True
                if stopped:
                    return True
                await asyncio.sleep(0.2)
        finally:
            for task in in_flight:
                task.cancel()

    def _claim(self, want: int) -> list[PageRef]:
        with session_scope() as session:
            return store.claim(
                session,
                self.crawl.id,
                want,
                lease=self.lease,
                per_domain=self.settings.scrape_domain_concurrency,
            )

    def _state(self) -> tuple[bool, bool]:
        """(nothing left to fetch, the crawl is no longer running)."""
        with session_scope() as session:
            frontier = store.state(session, self.crawl.id)
            crawl = session.get(Crawl, self.crawl.id)
            return frontier.finished, crawl is None or crawl.status != CrawlStatus.RUNNING

    def _finish(self) -> None:
        with session_scope() as session:
            store.finish(session, self.crawl.id)

    async def _visit(self, page: PageRef) -> None:
        # Held in place at most this long in all: well inside the page's lease.
        hold_until = min(self._deadline, time.monotonic() + 4 * WAIT_IN_PLACE)
        while True:
            try:
                outcome = await self._fetch_page(page)
            except Exception as exc:  # an unexpected error fails the page, never the crawl
                log.exception("crawl %s: visiting %s failed", self.crawl.id, page.url)
                outcome = Outcome(Kind.RETRY, error=f"{type(exc).__name__}: {exc}")
            # A short wait for the domain's turn is waited here, page in hand: back in line
            # through the database it would cost two writes and a claim.
            soon = time.monotonic() + outcome.delay < hold_until
            if outcome.kind is not Kind.WAIT or outcome.delay > WAIT_IN_PLACE or not soon:
                break
            await asyncio.sleep(outcome.delay)
        for attempt in range(RECORD_ATTEMPTS):
            try:
                await asyncio.to_thread(self._record, page, outcome)
                return
            except DBAPIError as exc:
                # The page stays claimed until its lease ends, then another job takes it.
                log.warning("crawl %s: recording %s failed: %s", self.crawl.id, page.url, exc)
                await asyncio.sleep(0.2 * (attempt + 1))

    def _record(self, page: PageRef, outcome: Outcome) -> None:
        with session_scope() as session:
            store.record(
                session, self.crawl, page, outcome, max_attempts=self.settings.scrape_max_attempts
            )

    # --- one page --------------------------------------------------------------------------

    async def _robots_for(self, url: str) -> Robots:
        if not self.settings.scrape_obey_robots:
            return Robots()
        return await self.robots.get(origin_of(url))

    async def _fetch_robots(self, origin: str) -> RobotsAnswer:
        """robots.txt, fetched like any page: within the domain's limits, through a proxy."""
        url = origin + "/robots.txt"
        domain = host_of(url)
        holder = f"robots:{uuid.uuid4().hex}"
        try:
            proxy = self.pool.choose(domain)
        except NoProxy:
            return RobotsAnswer(0, "")
        response: fetch.Response | None = None
        deadline = time.monotonic() + 60
        while response is None:
            slot = await self.polite.take(
                domain,
                holder,
                crawl_delay=None,
                proxy_id=proxy.id if proxy else None,
                deadline=deadline,
            )
            if isinstance(slot, Refused):
                return RobotsAnswer(0, "")
            try:
                due = time.monotonic() + slot.wait
                await asyncio.sleep(slot.wait)
                response = await fetch.get(
                    await self._client(proxy),
                    url,
                    headers={"User-Agent": self.settings.scrape_user_agent},
                    max_bytes=512 * 1024,
                    timeout=self.settings.scrape_timeout_seconds,
                    not_after=due + LATE_SLOT_SECONDS,
                )
            except fetch.Late:
                continue  # book again rather than go late
            except (httpx.HTTPError, fetch.TooLarge, BlockedDestination) as exc:
                log.info("robots.txt of %s unavailable: %s", origin, type(exc).__name__)
                return RobotsAnswer(0, "")
            finally:
                slot.release()
        max_age = None
        for directive in response.headers.get("cache-control", "").split(","):
            name, _, value = directive.strip().partition("=")
            if name.lower() == "max-age" and value.isdigit():
                max_age = float(value)
        text = response.text() if response.status < 300 else ""
        delay = Robots(Protego.parse(text)).crawl_delay(self.agent) if text else None
        rate = self.settings.rate_for(domain)
        if delay and delay > rate.interval:
            self.polite.space_after(domain, delay)
        return RobotsAnswer(response.status, text, max_age)

    async def _fetch_page(self, page: PageRef) -> Outcome:
        """One request for the page. A redirect is not followed here: its target joins the
        frontier as a page of its own, so it is fetched once however many pages lead to it,
        within its own domain's limits and robots.txt, and a redirect loop simply ends."""
        settings, url = self.settings, page.url
        domain = host_of(url)
        robots = await self._robots_for(url)
        if robots.unavailable:
            return Outcome(
                Kind.DEFER, error="robots.txt unavailable", delay=robots.retry_in, domain_wide=True
            )
        if not robots.allows(url, self.agent):
            return Outcome(Kind.SKIPPED_ROBOTS, error="robots.txt disallows it")
        try:
            proxy = self.pool.choose(domain)
        except NoProxy as exc:
            return Outcome(Kind.DEFER, error=str(exc), delay=exc.retry_after)
        # Everything that may wait comes before the slot is booked: from then on, the clock runs.
        kept = await asyncio.to_thread(self._validators, page)
        slot = self.polite.try_take(
            domain,
            f"{self.crawl.id}:{page.id}:{uuid.uuid4().hex[:8]}",
            crawl_delay=robots.crawl_delay(self.agent),
            proxy_id=proxy.id if proxy else None,
            horizon=BOOKING_HORIZON,
        )
        if isinstance(slot, Refused):
            return Outcome(Kind.WAIT, delay=slot.retry_after, domain_wide=slot.why != "proxy rate")
        due = time.monotonic() + slot.wait
        headers = {"User-Agent": settings.scrape_user_agent, "Accept": ACCEPT}
        if kept is not None and kept.etag:
            headers["If-None-Match"] = kept.etag
        if kept is not None and kept.last_modified:
            headers["If-Modified-Since"] = kept.last_modified
        try:
            await asyncio.sleep(slot.wait)
            paused = self.polite.paused_for(domain)
            if paused > 0:  # a Retry-After came in while this request waited for its slot
                return Outcome(Kind.WAIT, delay=paused, domain_wide=True)
            client = await self._client(proxy)
            if time.monotonic() - due > LATE_SLOT_SECONDS:
                # Sent this late, it would land right before the next booked request:
                # give the place up and book again rather than crowd the site.
                return Outcome(Kind.WAIT, delay=0.0)
            response = await fetch.get(
                client,
                url,
                headers=headers,
                max_bytes=settings.scrape_max_body_bytes,
                timeout=settings.scrape_timeout_seconds,
                proxied=proxy is not None,
                not_after=due + LATE_SLOT_SECONDS,
            )
        except fetch.Late:
            return Outcome(Kind.WAIT, delay=0.0)
        except (fetch.TooLarge, BlockedDestination) as exc:
            return Outcome(Kind.FAILED, error=str(exc))
        except PROXY_FAILURES as exc:
            if proxy is None:
                error = f"{type(exc).__name__}: {exc}"
                return Outcome(Kind.RETRY, error=error, delay=self._backoff(page))
            rest = self.pool.failed(proxy, type(exc).__name__)
            log.warning(
                "proxy %s failed (%s); resting %.0fs", proxy.label, type(exc).__name__, rest
            )
            return Outcome(Kind.DEFER, error=f"proxy {proxy.label} failed: {type(exc).__name__}")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            return Outcome(Kind.RETRY, error=error, delay=self._backoff(page))
        except httpx.HTTPError as exc:
            return Outcome(Kind.FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            slot.release()
        return self._outcome(page, domain, proxy, kept, response)

    def _outcome(
        self,
        page: PageRef,
        domain: str,
        proxy: Proxy | None,
        kept: PageValidators | None,
        response: fetch.Response,
    ) -> Outcome:
        banned = self._banned(proxy, page, response)
        if banned is not None:
            return banned
        status = response.status
        if status in (429, 503):
            waited = self._retry_after(domain, response, page)
            if waited is not None:
                return waited
        if status >= 500:
            return Outcome(
                Kind.RETRY, error=f"HTTP {status}", http_status=status, delay=self._backoff(page)
            )
        location = response.location()
        if location is not None:
            return self._redirected(page, status, location)
        if status == 304 and kept is not None:
            return Outcome(
                Kind.NOT_MODIFIED,
                http_status=status,
                final_url=page.url,
                content_hash=kept.content_hash,
                item=kept.item,
                links=list(kept.links),
            )
        if status >= 400:
            return Outcome(Kind.FAILED, error=f"HTTP {status}", http_status=status)
        return self._fetched(page, page.url, response)

    def _redirected(self, page: PageRef, status: int, location: str) -> Outcome:
        try:
            target = normalize(location, page.url)
        except BadUrl as exc:
            return Outcome(Kind.FAILED, error=f"redirect to a bad URL: {exc}", http_status=status)
        if not self.crawl.rules.allows(target):
            error = f"redirects outside the crawl's rules, to {target}"
            return Outcome(Kind.SKIPPED, error=error, http_status=status, final_url=target)
        return Outcome(Kind.REDIRECTED, http_status=status, final_url=target, links=[target])

    def _validators(self, page: PageRef) -> PageValidators | None:
        with session_scope() as session:
            return store.validators(session, self.crawl, page)

    def _backoff(self, page: PageRef) -> float:
        return float(self.settings.scrape_backoff_seconds * 2**page.attempts)

    def _retry_after(self, domain: str, response: fetch.Response, page: PageRef) -> Outcome | None:
        """429, or 503 with Retry-After: the whole domain waits, and no attempt is spent."""
        wait = response.retry_after()
        if wait is None:
            if response.status == 503:
                return None  # a plain 5xx
            wait = self._backoff(page)
        if wait > self.settings.scrape_max_retry_after_seconds:
            return Outcome(
                Kind.FAILED,
                http_status=response.status,
                error=(
                    f"HTTP {response.status} with Retry-After {wait:.0f}s, longer than "
                    "CONVEYOR_SCRAPE_MAX_RETRY_AFTER_SECONDS"
                ),
            )
        self.polite.pause(domain, wait)
        return Outcome(
            Kind.DEFER,
            http_status=response.status,
            error=f"HTTP {response.status}, Retry-After {wait:g}s",
            delay=wait,
            domain_wide=True,
        )

    def _banned(
        self, proxy: Proxy | None, page: PageRef, response: fetch.Response
    ) -> Outcome | None:
        """A proxy the site refuses (403, a 429 without Retry-After, a ban marker) rests, and
        the page tries another. A 429 with Retry-After paces the whole site, not the proxy."""
        if proxy is None:
            return None
        paced = response.status == 429 and response.retry_after() is not None
        banned = (response.status in (403, 429) and not paced) or (
            response.status < 300 and any(marker in response.body for marker in self.ban_markers)
        )
        if not banned:
            self.pool.succeeded(proxy)
            return None
        reason = (
            f"banned: HTTP {response.status}" if response.status >= 400 else "banned: ban marker"
        )
        rest = self.pool.failed(proxy, reason, banned=True)
        log.warning("proxy %s %s; resting %.0fs", proxy.label, reason, rest)
        if page.deferrals >= PROXY_BANS_PER_PAGE:
            return None  # every proxy gets it: the answer is the page's own
        return Outcome(
            Kind.DEFER, http_status=response.status, error=f"proxy {proxy.label} {reason}"
        )

    def _fetched(self, page: PageRef, url: str, response: fetch.Response) -> Outcome:
        outcome = Outcome(
            Kind.FETCHED,
            http_status=response.status,
            final_url=url,
            content_type=response.content_type[:120] or None,
            content_hash=_sha256(response.body),
            size=len(response.body),
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )
        if not response.is_html:
            return outcome
        found = extract(response.text(), self.rules, want_links=page.depth < self.crawl.max_depth)
        outcome.item = found.item
        base = url if found.base is None else normalize_or(found.base, url)
        links: list[str] = []
        for href in found.links:
            try:
                link = normalize(href, base)
            except BadUrl:
                continue  # mailto:, javascript:, a malformed href
            if self.crawl.rules.allows(link):
                links.append(link)
        outcome.links = list(dict.fromkeys(links))
        return outcome


def normalize_or(url: str, base: str) -> str:
    try:
        return normalize(url, base)
    except BadUrl:
        return base
