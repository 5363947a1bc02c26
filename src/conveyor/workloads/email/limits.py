"""The email rate limits: provider-wide, per recipient domain and per owner, all in Redis.

Each is a GCRA bucket from conveyor.core.rate_limit, so it holds across every worker
process and machine. A domain's slot is only taken when one is free now: a sender finding
a domain busy moves on to other recipients instead of waiting. The owner and provider slots
are booked ahead and the sender sleeps until them, so they are handed out evenly in arrival
order. All of an email's limits are asked in one script call, all or nothing: a busy domain
costs the provider no slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from conveyor.core import rate_limit
from conveyor.core.settings import section
from conveyor.workloads.email.settings import EmailSettings

PROVIDER_KEY = "email:provider"
# Booking further ahead than this means the limit is far over-subscribed: ask again later.
RESERVE_HORIZON = 10.0

DOMAIN_PREFIX = "email:domain:"
TakeAll = Callable[[Sequence[rate_limit.Bucket]], rate_limit.Decision]


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
    def from_settings(cls, settings: EmailSettings | None = None) -> EmailLimits:
        settings = settings or section(EmailSettings)
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
    take_all: TakeAll = rate_limit.take_all

    def take(self, owner: str, domains: dict[str, int], count: int) -> rate_limit.Decision:
        """Slots for one email: a free one at each recipient domain now, and booked ones at
        the owner and provider limits; all in one round trip, and none if one says no.

        `refused_by` starting with DOMAIN_PREFIX: that domain is busy, try another email.
        Otherwise, not allowed nor reserved: the provider or owner limit is booked past
        RESERVE_HORIZON; ask again after `retry_after`."""
        buckets = []
        for domain, recipients in sorted(domains.items()):
            rate = as_rate(self.limits.domain_rate(domain))
            if rate is not None:
                buckets.append(rate_limit.Bucket(DOMAIN_PREFIX + domain, rate, cost=recipients))
        for key, per_second in (
            (f"email:owner:{owner}", self.limits.owner),
            (PROVIDER_KEY, self.limits.provider),
        ):
            rate = as_rate(per_second)
            if rate is not None:
                buckets.append(rate_limit.Bucket(key, rate, cost=count, horizon=RESERVE_HORIZON))
        return self.take_all(buckets)
