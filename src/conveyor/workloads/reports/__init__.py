"""Reports: jobs, emails, payments and images over a period, as CSV, XLSX or PDF."""

from __future__ import annotations

from conveyor.core.workloads import Workload

workload = Workload(
    name="reports",
    tasks="conveyor.workloads.reports.tasks",
    queues={"reports": ("conveyor.workloads.reports.*",)},
    api="conveyor.workloads.reports.api",
    settings="conveyor.workloads.reports.settings:ReportsSettings",
    extra="reports",
    needs=("xlsxwriter", "fpdf", "jinja2"),
)
