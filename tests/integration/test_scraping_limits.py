"""The scraping workload's shared state on a real Redis, without workers: proxy rotation and
rest, robots.txt fetched once for every worker, and the per-domain limits across two
"processes" (two sets of objects on the same keys)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise

import pytest
import redis

from conveyor.workloads.scraping.politeness import Politeness, Refused, Slot
from conveyor.workloads.scraping.proxies import NoProxy, ProxyPool, parse_proxy
from conveyor.workloads.scraping.robots import RobotsAnswer, RobotsCache
from conveyor.workloads.scraping.settings import Rotation, ScrapingSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    # Only the keys of the scraping workload: the suite's other tests share this Redis.
    for pattern in ("conveyor:scrape:*", "conveyor:rate:scrape:*", "conveyor:semaphore:scrape:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


def _pool(client: redis.Redis, rotation: Rotation, count: int = 3) -> ProxyPool:
    run = uuid.uuid4().hex[:6]  # proxies of their own: their health is kept by id in Redis
    proxies = [parse_proxy(f"http://user:pw{n}@proxy{n}-{run}.test:3128") for n in range(count)]
    return ProxyPool(client, proxies, rotation=rotation, cooldown=30)


def test_round_robin_takes_every_proxy_in_turn(client: redis.Redis) -> None:
    pool = _pool(client, Rotation.ROUND_ROBIN)
    chosen = [pool.choose("a.test") for _ in range(6)]
    labels = [proxy.label for proxy in chosen if proxy]
    assert len(set(labels[:3])) == 3
    assert labels[:3] == labels[3:]


def test_least_recently_used_takes_the_one_idle_longest(client: redis.Redis) -> None:
    pool = _pool(client, Rotation.LEAST_RECENTLY_USED)
    first = [pool.choose("a.test") for _ in range(3)]
    assert len({proxy.id for proxy in first if proxy}) == 3
    assert pool.choose("b.test") == first[0]


def test_sticky_keeps_a_domain_on_its_proxy_until_that_one_rests(client: redis.Redis) -> None:
    pool = _pool(client, Rotation.STICKY, count=4)
    domains = [f"site{n}.test" for n in range(12)]
    before = {domain: pool.choose(domain) for domain in domains}
    assert all(pool.choose(domain) == before[domain] for domain in domains)
    resting = before[domains[0]]
    assert resting is not None
    pool.failed(resting, "ConnectError")
    after = {domain: pool.choose(domain) for domain in domains}
    for domain in domains:
        if before[domain] == resting:
            assert after[domain] != resting
        else:
            assert after[domain] == before[domain]  # only the resting proxy's domains move


def test_a_failed_proxy_rests_longer_each_time_and_a_success_clears_it(
    client: redis.Redis,
) -> None:
    pool = _pool(client, Rotation.ROUND_ROBIN, count=1)
    (proxy,) = pool.proxies
    assert pool.failed(proxy, "ConnectError") == 30
    with pytest.raises(NoProxy) as caught:
        pool.choose("a.test")
    assert 28 < caught.value.retry_after <= 30
    assert pool.failed(proxy, "banned: HTTP 403", banned=True) == 60
    (described,) = pool.describe()
    assert described["state"] == "cooling_down"
    assert (described["bans"], described["errors"]) == (1, 1)
    assert described["last_error"] == "banned: HTTP 403"
    assert "pw0" not in str(described)
    pool.succeeded(proxy)
    assert pool.choose("a.test") == proxy
    assert pool.describe()[0]["failures_in_a_row"] == 0


def test_robots_txt_is_fetched_once_for_every_worker(client: redis.Redis) -> None:
    fetched: list[str] = []

    async def fetch(origin: str) -> RobotsAnswer:
        fetched.append(origin)
        await asyncio.sleep(0.3)  # the others arrive while it is being fetched
        return RobotsAnswer(200, "User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n")

    origin = f"http://robots-{uuid.uuid4().hex[:6]}.test"

    async def main() -> list[bool]:
        caches = [RobotsCache(client, fetch, ttl=60) for _ in range(4)]  # four workers
        found = await asyncio.gather(*(cache.get(origin) for cache in caches))
        return [robots.allows(f"{origin}/private/x", "Bot") for robots in found] + [
            robots.crawl_delay("Bot") == 2.0 for robots in found
        ]

    assert asyncio.run(main()) == [False] * 4 + [True] * 4
    assert fetched == [origin]
    assert 55_000 < client.pttl(f"conveyor:scrape:robots:{origin}") <= 60_000


@pytest.mark.parametrize(
    ("status", "allows", "unavailable"),
    [(404, True, False), (503, False, True), (0, False, True)],
)
def test_robots_txt_missing_allows_all_and_unreachable_holds_the_site(
    client: redis.Redis, status: int, allows: bool, unavailable: bool
) -> None:
    async def fetch(origin: str) -> RobotsAnswer:
        return RobotsAnswer(status, "")

    origin = f"http://robots-{uuid.uuid4().hex[:6]}.test"
    robots = asyncio.run(RobotsCache(client, fetch, ttl=60).get(origin))
    assert robots.unavailable is unavailable
    if not unavailable:
        assert robots.allows(f"{origin}/anything", "Bot") is allows
    else:
        assert 50 < robots.retry_in <= 60


def test_two_processes_share_a_domain_rate_and_concurrency(client: redis.Redis) -> None:
    settings = ScrapingSettings(scrape_domain_rate="5/s", scrape_domain_concurrency=2)
    domain = f"{uuid.uuid4().hex[:6]}.test"
    workers = [Politeness(client, settings, crawl_id="c") for _ in range(2)]
    booked: list[float] = []
    slots: list[Slot] = []
    deadline = time.monotonic() + 10
    while len(booked) < 10 and time.monotonic() < deadline:
        for number, worker in enumerate(workers):
            answer = worker.try_take(
                domain, f"h{len(booked)}-{number}", crawl_delay=None, proxy_id=None, horizon=1.0
            )
            if isinstance(answer, Slot):
                booked.append(time.monotonic() + answer.wait)
                slots.append(answer)
                if len(slots) == 2:  # the concurrency cap: two in flight at once
                    third = workers[0].try_take(
                        domain, "third", crawl_delay=None, proxy_id=None, horizon=1.0
                    )
                    assert isinstance(third, Refused)
                    assert third.why == "concurrency"
                for slot in slots:
                    slot.release()
                slots.clear()
        time.sleep(0.01)
    assert len(booked) == 10
    gaps = [later - earlier for earlier, later in pairwise(booked)]
    assert min(gaps) >= 0.2 * 1.05 - 0.01  # 5/s, booked 5% apart, from both "processes"


def test_a_retry_after_pauses_the_domain_for_everyone(client: redis.Redis) -> None:
    settings = ScrapingSettings(scrape_domain_rate="100/s")
    domain = f"{uuid.uuid4().hex[:6]}.test"
    first, second = (Politeness(client, settings, crawl_id=c) for c in ("a", "b"))
    first.pause(domain, 2.0)
    first.pause(domain, 0.5)  # a shorter pause never shortens it
    answer = second.try_take(domain, "h", crawl_delay=None, proxy_id=None, horizon=1.0)
    assert isinstance(answer, Refused)
    assert answer.why == "retry-after"
    assert 1.8 < answer.retry_after <= 2.0


def test_a_crawl_delay_slows_the_domain(client: redis.Redis) -> None:
    settings = ScrapingSettings(scrape_domain_rate="100/s")
    domain = f"{uuid.uuid4().hex[:6]}.test"
    polite = Politeness(client, settings, crawl_id="c")
    waits = []
    for number in range(3):
        answer = polite.try_take(domain, f"h{number}", crawl_delay=0.5, proxy_id=None, horizon=5)
        assert isinstance(answer, Slot)
        answer.release()
        waits.append(answer.wait)
    assert waits[1] - waits[0] >= 0.5
    assert waits[2] - waits[1] >= 0.5
