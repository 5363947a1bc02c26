"""The proxy pool: proxies from settings and the API, rotation, and health kept in Redis.

A proxy that fails (cannot be reached) or is banned (403 or 429 through it, or a page with a
ban marker) rests for CONVEYOR_SCRAPE_PROXY_COOLDOWN_SECONDS, doubled for each failure in a
row, then gets requests again: its next request is its health check, and a success clears
its record. A proxy's URL can hold credentials, so it is known everywhere else by its label
(scheme://host:port) and its id; the URL itself is only handed to the HTTP client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from conveyor.workloads.scraping.settings import Rotation

STATE_PREFIX = "conveyor:scrape:proxy:"
ROUND_ROBIN_KEY = "conveyor:scrape:proxies:next"
MAX_COOLDOWN_SECONDS = 3600.0


class BadProxy(ValueError):
    """A proxy URL that cannot be used. The message never repeats the URL (credentials)."""


@dataclass(frozen=True)
class Proxy:
    id: str
    url: str
    label: str
    source: str = "settings"  # or "api"

    def __repr__(self) -> str:  # never the URL: it may carry a password
        return f"Proxy({self.label})"


def parse_proxy(url: str, source: str = "settings") -> Proxy:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise BadProxy("a proxy URL must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise BadProxy("a proxy URL's port must be a number") from None
    if not parts.hostname:
        raise BadProxy("a proxy URL needs a host, e.g. http://user:pass@proxy.example:3128")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    label = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    proxy_id = hashlib.sha256(url.strip().encode()).hexdigest()[:16]
    return Proxy(proxy_id, url.strip(), label, source)


def parse_proxies(value: str, source: str = "settings") -> list[Proxy]:
    proxies = []
    for number, part in enumerate(filter(None, (p.strip() for p in value.split(","))), 1):
        try:
            proxies.append(parse_proxy(part, source))
        except BadProxy as exc:
            raise BadProxy(f"proxy {number}: {exc}") from None
    return proxies


@dataclass(frozen=True)
class ProxyState:
    cool_until: float = 0.0
    failures: int = 0
    used_at: float = 0.0
    requests: int = 0
    bans: int = 0
    errors: int = 0
    last_error: str | None = None

    @classmethod
    def of(cls, raw: dict[Any, Any]) -> ProxyState:
        fields = {
            (key.decode() if isinstance(key, bytes) else key): (
                value.decode() if isinstance(value, bytes) else value
            )
            for key, value in raw.items()
        }

        def number(name: str) -> float:
            return float(fields.get(name) or 0)

        return cls(
            number("cool_until"),
            int(number("failures")),
            number("used_at"),
            int(number("requests")),
            int(number("bans")),
            int(number("errors")),
            fields.get("last_error") or None,
        )


class NoProxy(Exception):
    """Every proxy is resting: try again in `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every proxy is cooling down; next one free in {retry_after:.1f}s")
        self.retry_after = retry_after


def _rendezvous(domain: str, proxy: Proxy) -> str:
    return hashlib.sha256(f"{domain}\0{proxy.id}".encode()).hexdigest()


class ProxyPool:
    def __init__(
        self,
        client: redis.Redis,
        proxies: Iterable[Proxy],
        *,
        rotation: Rotation,
        cooldown: float,
    ) -> None:
        self.client = client
        self.proxies = sorted({proxy.id: proxy for proxy in proxies}.values(), key=lambda p: p.id)
        self.rotation = rotation
        self.cooldown = cooldown

    def __bool__(self) -> bool:
        return bool(self.proxies)

    def states(self) -> dict[str, ProxyState]:
        pipe = self.client.pipeline(transaction=False)
        for proxy in self.proxies:
            pipe.hgetall(STATE_PREFIX + proxy.id)
        return {
            proxy.id: ProxyState.of(raw)
            for proxy, raw in zip(self.proxies, pipe.execute(), strict=True)
        }

    def choose(self, domain: str) -> Proxy | None:
        """The proxy for a request to `domain`; None when there are no proxies (direct)."""
        if not self.proxies:
            return None
        now = time.time()
        states = self.states()
        ready = [proxy for proxy in self.proxies if states[proxy.id].cool_until <= now]
        if not ready:
            raise NoProxy(min(state.cool_until for state in states.values()) - now)
        if self.rotation is Rotation.STICKY:
            # Rendezvous hashing: a domain keeps its proxy while that one is well, and only
            # the domains of a resting proxy move.
            chosen = max(ready, key=lambda proxy: _rendezvous(domain, proxy))
        elif self.rotation is Rotation.LEAST_RECENTLY_USED:
            chosen = min(ready, key=lambda proxy: (states[proxy.id].used_at, proxy.id))
        else:
            chosen = ready[int(self.client.incr(ROUND_ROBIN_KEY)) % len(ready)]
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(STATE_PREFIX + chosen.id, "used_at", repr(now))
        pipe.hincrby(STATE_PREFIX + chosen.id, "requests", 1)
        pipe.execute()
        return chosen

    def succeeded(self, proxy: Proxy) -> None:
        key = STATE_PREFIX + proxy.id
        if self.client.hget(key, "failures") not in (None, "0", b"0"):
            self.client.hset(key, mapping={"failures": 0, "cool_until": 0})

    def failed(self, proxy: Proxy, reason: str, *, banned: bool = False) -> float:
        """Rest the proxy; returns for how long. `reason` must not contain its URL."""
        key = STATE_PREFIX + proxy.id
        failures = int(self.client.hincrby(key, "failures", 1))
        rest = float(min(self.cooldown * 2 ** (failures - 1), MAX_COOLDOWN_SECONDS))
        self.client.hset(
            key, mapping={"cool_until": repr(time.time() + rest), "last_error": reason[:300]}
        )
        self.client.hincrby(key, "bans" if banned else "errors", 1)
        return rest

    def describe(self) -> list[dict[str, Any]]:
        """Every proxy as the API shows it: label and health, never the URL."""
        now = time.time()
        states = self.states()
        out = []
        for proxy in self.proxies:
            state = states[proxy.id]
            cooling = state.cool_until > now
            out.append(
                {
                    "id": proxy.id,
                    "label": proxy.label,
                    "source": proxy.source,
                    "state": "cooling_down" if cooling else "ready",
                    "cooling_for_seconds": round(state.cool_until - now, 1) if cooling else 0,
                    "failures_in_a_row": state.failures,
                    "requests": state.requests,
                    "bans": state.bans,
                    "errors": state.errors,
                    "last_error": state.last_error,
                }
            )
        return out
