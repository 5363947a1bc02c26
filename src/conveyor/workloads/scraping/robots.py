"""robots.txt: fetched once per site (origin) by whichever worker asks first, kept in Redis
for every worker until it expires, and obeyed (Disallow, Allow, Crawl-delay) with protego.

What a site's robots.txt answer means, as the major crawlers read it:
  2xx          its rules
  4xx          no rules: everything is allowed
  5xx, error   the site cannot say: nothing is fetched from it for a while (UNAVAILABLE_SECONDS)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis
from protego import Protego

ROBOTS_PREFIX = "conveyor:scrape:robots:"
LOCK_PREFIX = "conveyor:scrape:robots-lock:"
UNAVAILABLE_SECONDS = 60
MAX_ROBOTS_BYTES = 512 * 1024  # Google reads the first 500 KiB
FETCH_LOCK_SECONDS = 30


@dataclass(frozen=True)
class RobotsAnswer:
    """A fetch of /robots.txt: status (0 for a network error), body and how long to keep it."""

    status: int
    text: str
    max_age: float | None = None


# (origin) -> the answer; the caller fetches https://host/robots.txt politely.
RobotsFetcher = Callable[[str], Awaitable[RobotsAnswer]]


@dataclass(frozen=True)
class Robots:
    """One site's rules. `unavailable` means: ask again in `retry_in` seconds."""

    parser: Protego | None = None
    unavailable: bool = False
    retry_in: float = 0.0

    def allows(self, url: str, agent: str) -> bool:
        return self.parser is None or bool(self.parser.can_fetch(url, agent))

    def crawl_delay(self, agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(agent)
        return float(delay) if delay else None


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups name: 'ConveyorBot/1.0 (+...)' -> 'ConveyorBot'."""
    return user_agent.split("/", 1)[0].split(" ", 1)[0] or user_agent


class RobotsCache:
    def __init__(self, client: redis.Redis, fetch: RobotsFetcher, *, ttl: float) -> None:
        self.client = client
        self.fetch = fetch
        self.ttl = ttl
        self._local: dict[str, tuple[float, Robots]] = {}

    def _from_stored(self, stored: bytes | str, expires_in: float) -> Robots:
        answer = json.loads(stored)
        status = int(answer["status"])
        if 200 <= status < 300:
            return Robots(Protego.parse(answer["text"]))
        if 400 <= status < 500:
            return Robots()
        return Robots(unavailable=True, retry_in=max(expires_in, 1.0))

    def _remember(self, origin: str, robots: Robots, expires_in: float) -> Robots:
        self._local[origin] = (time.monotonic() + min(expires_in, 60.0), robots)
        return robots

    async def get(self, origin: str) -> Robots:
        cached = self._local.get(origin)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        key = ROBOTS_PREFIX + origin
        deadline = time.monotonic() + FETCH_LOCK_SECONDS + 5
        while True:
            stored = self.client.get(key)
            if stored is not None:
                expires_in = max(int(self.client.pttl(key)), 1000) / 1000
                return self._remember(origin, self._from_stored(stored, expires_in), expires_in)
            # One worker fetches; the others wait for what it stores.
            if self.client.set(LOCK_PREFIX + origin, "1", nx=True, ex=FETCH_LOCK_SECONDS):
                break
            if time.monotonic() > deadline:
                return Robots(unavailable=True, retry_in=5.0)
            await asyncio.sleep(0.1)
        try:
            answer = await self.fetch(origin)
        finally:
            self.client.delete(LOCK_PREFIX + origin)
        keep = float(UNAVAILABLE_SECONDS)
        if answer.status < 500 and answer.status != 0:
            keep = self.ttl if answer.max_age is None else min(self.ttl, answer.max_age)
            keep = max(keep, 1.0)
        text = answer.text[:MAX_ROBOTS_BYTES]
        stored_value = json.dumps({"status": answer.status, "text": text})
        self.client.set(key, stored_value, px=round(keep * 1000))
        return self._remember(origin, self._from_stored(stored_value, keep), keep)
