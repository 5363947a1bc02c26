"""Scraping: polite crawls (per-domain limits, robots.txt, proxies) with CSS extraction."""

from __future__ import annotations

from conveyor.core.workloads import Workload

workload = Workload(
    name="scraping",
    tasks="conveyor.workloads.scraping.tasks",
    queues={"scraping": ("conveyor.workloads.scraping.*",)},
    api="conveyor.workloads.scraping.api",
    settings="conveyor.workloads.scraping.settings:ScrapingSettings",
    extra="scraping",
    needs=("selectolax", "protego", "url_normalize", "charset_normalizer"),
)
