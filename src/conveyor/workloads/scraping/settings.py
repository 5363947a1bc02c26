"""The scraping workload's settings: politeness, fetching limits, proxies and crawl caps."""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from conveyor.core.rate_limit import Rate, parse_rate
from conveyor.core.settings import SettingsSection


class Rotation(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_RECENTLY_USED = "least_recently_used"
    STICKY = "sticky"


def parse_domain_rates(value: str) -> dict[str, Rate]:
    """'example.com=5/s, slow.org=1/10s' -> {'example.com': Rate, ...}."""
    rates: dict[str, Rate] = {}
    for part in filter(None, (piece.strip() for piece in value.split(","))):
        domain, sep, spec = part.partition("=")
        if not sep or not domain.strip():
            raise ValueError(f"{part!r} is not of the form domain=rate, e.g. example.com=2/s")
        rates[domain.strip().lower()] = parse_rate(spec.strip())
    return rates


class ScrapingSettings(SettingsSection):
    scrape_user_agent: str = Field(
        default="ConveyorBot/1.0 (+set CONVEYOR_SCRAPE_USER_AGENT to name yourself)",
        min_length=3,
        description="User-Agent of every request; name the operator and a contact URL or email.",
    )
    scrape_domain_rate: str = Field(
        default="1/s",
        description="Requests per domain, shared by every worker (e.g. 1/s, 30/m, 2/s burst 2).",
    )
    scrape_domain_rates: str = Field(
        default="",
        description="Per-domain rates overriding the default: example.com=5/s,slow.org=1/10s.",
    )
    scrape_domain_concurrency: int = Field(
        default=2, ge=1, le=100, description="Requests in flight to one domain, across workers."
    )
    scrape_requests_in_flight: int = Field(
        default=32, ge=1, le=500, description="Requests in flight per crawl job (async)."
    )
    scrape_crawl_jobs: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Jobs that work on one crawl at once (each on any worker of `scraping`).",
    )
    scrape_timeout_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Seconds for one request, connect to last byte."
    )
    scrape_max_body_bytes: int = Field(
        default=5 * 1_048_576, ge=1024, description="A larger response is not kept (page failed)."
    )
    scrape_max_attempts: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Attempts for a page that fails with 5xx, a timeout or a connection error.",
    )
    scrape_backoff_seconds: float = Field(
        default=1.0, gt=0, le=600, description="First retry delay of a failing page; doubles."
    )
    scrape_max_retry_after_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest Retry-After obeyed; a longer one fails the page for now.",
    )
    scrape_robots_ttl_seconds: int = Field(
        default=3600, ge=0, description="How long a robots.txt is kept (capped by its max-age)."
    )
    scrape_obey_robots: bool = Field(
        default=True, description="Obey robots.txt (Disallow and Crawl-delay)."
    )
    scrape_max_pages_limit: int = Field(
        default=100_000, ge=1, description="The largest max_pages a crawl may ask for."
    )
    scrape_max_depth_limit: int = Field(
        default=20, ge=0, description="The largest max_depth a crawl may ask for."
    )
    scrape_max_seeds: int = Field(default=1000, ge=1, description="Most seed URLs in one crawl.")
    scrape_slice_seconds: float = Field(
        default=120.0,
        gt=1,
        description="A crawl job runs this long, then continues as a fresh delivery.",
    )
    scrape_proxies: SecretStr | None = Field(
        default=None,
        description="Proxy URLs, comma-separated (http://user:pass@host:port); never shown.",
    )
    scrape_proxy_rotation: Rotation = Field(
        default=Rotation.ROUND_ROBIN,
        description="round_robin, least_recently_used, or sticky (one proxy per domain).",
    )
    scrape_proxy_rate: str = Field(default="10/s", description="Requests per proxy, all domains.")
    scrape_proxy_cooldown_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A failed or banned proxy rests this long, doubling per failure in a row.",
    )
    scrape_ban_markers: str = Field(
        default="",
        description="Text that marks a page as a ban (e.g. 'Access denied|captcha'), | separated.",
    )

    scrape_demo_port: int = Field(
        default=8092, ge=1, le=65535, description="Port of the demo shop `conveyor up` serves."
    )

    @field_validator("scrape_domain_rate", "scrape_proxy_rate")
    @classmethod
    def _rate_parses(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("scrape_proxies")
    @classmethod
    def _proxies_parse(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here so a typo stops start-up, not a crawl; the message never shows the URL.
        parts = [p.strip() for p in value.get_secret_value().split(",")] if value else []
        for number, part in enumerate(filter(None, parts), 1):
            url = urlsplit(part)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"proxy {number} must be an http:// or https:// URL with a host, "
                    "e.g. http://user:pass@proxy.example:3128"
                )
        return value

    @field_validator("scrape_domain_rates")
    @classmethod
    def _rates_parse(cls, value: str) -> str:
        parse_domain_rates(value)
        return value

    def rate_for(self, domain: str) -> Rate:
        rates = parse_domain_rates(self.scrape_domain_rates)
        return rates.get(domain.lower()) or parse_rate(self.scrape_domain_rate)

    def ban_markers(self) -> list[str]:
        return [marker for marker in self.scrape_ban_markers.split("|") if marker.strip()]
