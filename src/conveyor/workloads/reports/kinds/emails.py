"""Emails per recipient domain: sent, bounced and suppressed, counted per recipient."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, select

from conveyor.workloads.email.models import Email
from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.table import Chart, Column, Row, Type, stream

OUTCOMES = ("sent", "bounced", "suppressed")


def _addresses(items: list[Any] | None, key: str) -> set[str]:
    return {str(item.get(key, "")).lower() for item in items or [] if isinstance(item, dict)}


def recipient_outcome(address: str, status: str, skipped: set[str], refused: set[str]) -> str:
    """One recipient's outcome: an email's status, unless that recipient alone was dropped."""
    if address in skipped:
        return "suppressed"
    if address in refused or status == "bounced":
        return "bounced"
    return status


class _EmailsSummary:
    def __init__(self) -> None:
        self.domains: dict[str, list[int]] = {}

    def add(self, rows: Sequence[Row]) -> None:
        for row in rows:
            counts = self.domains.setdefault(row[3], [0] * (len(OUTCOMES) + 2))
            counts[0] += 1
            outcome = row[4]
            counts[1 + OUTCOMES.index(outcome) if outcome in OUTCOMES else -1] += 1

    def finish(self, connection: Connection) -> list[Row]:
        return [(domain, *self.domains[domain]) for domain in sorted(self.domains)]


class EmailsReport:
    kind = "emails"
    title = "Emails"
    workload = "email"
    columns = (
        Column("email_id"),
        Column("created_at", Type.DATETIME),
        Column("recipient"),
        Column("domain"),
        Column("outcome"),
    )
    summary_columns = (
        Column("domain"),
        Column("recipients", Type.INT),
        *(Column(name, Type.INT) for name in OUTCOMES),
        Column("other", Type.INT),
    )
    chart = Chart("Recipients by domain", "domain", OUTCOMES)

    def chunks(
        self, connection: Connection, period: Period, owner: str | None, size: int
    ) -> Iterator[list[Row]]:
        first, after = period.bounds()
        query = select(
            Email.id, Email.created_at, Email.status, Email.to, Email.cc, Email.bcc,
            Email.skipped, Email.refused,
        ).where(Email.created_at >= first, Email.created_at < after)  # fmt: skip
        if owner is not None:
            query = query.where(Email.owner == owner)
        for chunk in stream(connection, query.order_by(Email.created_at, Email.id), size):
            rows: list[Row] = []
            for email_id, created, status, to, cc, bcc, skipped, refused in chunk:
                gone = _addresses(skipped, "email")
                refusals = _addresses(refused, "address")
                when = period.local(created)
                for item in [*(to or []), *(cc or []), *(bcc or [])]:
                    address = str(item.get("email", "")).lower()
                    domain = address.rpartition("@")[2]
                    outcome = recipient_outcome(address, status, gone, refusals)
                    rows.append((email_id, when, address, domain, outcome))
            yield rows

    def summary(self, period: Period, owner: str | None, size: int) -> _EmailsSummary:
        return _EmailsSummary()
