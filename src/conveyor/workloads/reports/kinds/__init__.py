"""The report kinds, by name."""

from __future__ import annotations

from conveyor.workloads.reports.kinds.emails import EmailsReport
from conveyor.workloads.reports.kinds.images import ImagesReport
from conveyor.workloads.reports.kinds.jobs import JobsReport
from conveyor.workloads.reports.kinds.payments import PaymentsReport
from conveyor.workloads.reports.table import Definition

KINDS: dict[str, Definition] = {
    report.kind: report
    for report in (JobsReport(), EmailsReport(), PaymentsReport(), ImagesReport())
}
