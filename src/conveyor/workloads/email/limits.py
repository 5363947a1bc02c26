"""The email rate limits: provider-wide, per recipient domain and per owner, all in Redis.

Each is a GCRA bucket from conveyor.core.rate_limit, so it holds across every worker
process and machine. The domain check only takes a slot when one is free (`acquire`): a
sender finding a domain busy moves on to other recipients instead of waiting. The owner and
provider checks book the next free slot (`reserve`) and the sender sleeps until it, so
slots are handed out evenly in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.core import rate_limit
from conveyor.core.settings import Settings, get_settings

PROVIDER_KEY = "email:provider"
# Booking further ahead than this means the limit is far over-subscribed: ask again later.
RESERVE_HORIZON = 10.0

Acquire = Callable[..., rate_limit.Decision]


def as_rate(per_second: float) -> rate_limit.Rate | None:
    """Messages per second as a Rate with burst 1 (evenly spaced); None when 0 (off)."""
    if per_second <= 0:
        return None
    return rate_limit.Rate(limit=1, period=1.0 / per_second)


@dataclass(frozen=True)
class EmailLimits:
    provider: float = 0.0
    domain: float = 0.0
    owner: float = 0.0
    domain_overrides: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EmailLimits:
        settings = settings or get_settings()
        return cls(
            provider=settings.email_rate_per_second,
            domain=settings.email_domain_rate_per_second,
            owner=settings.email_owner_rate_per_second,
            domain_overrides=settings.email_domain_rate_overrides,
        )

    def domain_rate(self, domain: str) -> float:
        return self.domain_overrides.get(domain.lower(), self.domain)


@dataclass
class Pacer:
    limits: EmailLimits
    acquire: Acquire = rate_limit.acquire
    reserve: Acquire = rate_limit.reserve

    def domains_wait(self, domains: dict[str, int]) -> float:
        """0 if every domain has a free slot now (taken); else seconds until one might."""
        for domain, count in sorted(domains.items()):
            rate = as_rate(self.limits.domain_rate(domain))
            if rate is None:
                continue
            decision = self.acquire(f"email:domain:{domain}", rate, cost=count)
            if not decision.allowed:
                return max(decision.retry_after, 0.001)
        return 0.0

    def global_wait(self, owner: str, count: int) -> tuple[float, bool]:
        """Seconds to wait for the owner and provider limits, and whether the slots are
        booked (True: send after the wait; False: ask again after it)."""
        wait = 0.0
        for key, per_second in (
            (f"email:owner:{owner}", self.limits.owner),
            (PROVIDER_KEY, self.limits.provider),
        ):
            rate = as_rate(per_second)
            if rate is None:
                continue
            decision = self.reserve(key, rate, cost=count, horizon=RESERVE_HORIZON)
            if not decision.allowed and not decision.reserved:
                return max(decision.retry_after, 0.01), False
            wait = max(wait, decision.retry_after if decision.reserved else 0.0)
        return wait, True
