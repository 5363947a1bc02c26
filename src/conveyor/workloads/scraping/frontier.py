"""The frontier's rules: one spelling per URL, and which URLs a crawl may visit.

Two links that differ only in case, default port, dot segments, percent-encoding, fragment,
tracking parameters or parameter order are one page: `normalize` makes them one string, and
`url_hash` of it is the page's key within its crawl.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from url_normalize import url_normalize

# Parameters that name who sent the visitor, not what the page is.
TRACKING_PARAMS = re.compile(r"^(utm_[a-z]+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_ga)$", re.I)
MAX_URL_CHARS = 2048


class BadUrl(ValueError):
    """A link that cannot be crawled: not http(s), no host, or absurdly long."""


def normalize(url: str, base: str | None = None) -> str:
    """The crawl's spelling of `url` (resolved against `base`), or BadUrl."""
    url = url.strip()
    if base is not None:
        url = urljoin(base, url)
    if len(url) > MAX_URL_CHARS:
        raise BadUrl(f"longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise BadUrl(f"scheme {parts.scheme or 'none'!r} is not http or https")
    if not parts.hostname:
        raise BadUrl("has no host")
    query = urlencode(
        sorted(
            (key, value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
            if not TRACKING_PARAMS.match(key)
        )
    )
    try:
        normalized = url_normalize(urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")))
    except (ValueError, UnicodeError) as exc:
        raise BadUrl(str(exc)) from None
    if not normalized:
        raise BadUrl("is empty")
    return normalized


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def domain_matches(host: str, domain: str) -> bool:
    """example.com allows example.com and its subdomains; an IP address only itself."""
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True)
class Rules:
    """Which URLs a crawl visits: allowed domains (their subdomains too), and include and
    exclude regular expressions over the whole URL (an empty include list includes all)."""

    allowed_domains: tuple[str, ...]
    include: tuple[re.Pattern[str], ...] = field(default=())
    exclude: tuple[re.Pattern[str], ...] = field(default=())

    @classmethod
    def of(
        cls, allowed_domains: Sequence[str], include: Sequence[str], exclude: Sequence[str]
    ) -> Rules:
        return cls(
            tuple(domain.lower().rstrip(".") for domain in allowed_domains),
            tuple(re.compile(pattern) for pattern in include),
            tuple(re.compile(pattern) for pattern in exclude),
        )

    def domain_allowed(self, url: str) -> bool:
        host = host_of(url)
        return any(domain_matches(host, domain) for domain in self.allowed_domains)

    def allows(self, url: str) -> bool:
        if not self.domain_allowed(url):
            return False
        if self.include and not any(pattern.search(url) for pattern in self.include):
            return False
        return not any(pattern.search(url) for pattern in self.exclude)
