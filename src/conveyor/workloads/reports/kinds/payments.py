"""Payments per currency and day: captured, refunded and net, reconciled against the ledger.

Captures and refunds count on the day they settled; the balance ledger's entries for the
same day must add up to the same net, or the row says by how much they differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date

from sqlalchemy import Connection, select

from conveyor.workloads.payments.models import BalanceEntry, Payment, Refund
from conveyor.workloads.reports.period import Period
from conveyor.workloads.reports.table import Chart, Column, Row, Type, stream

SUCCEEDED = "succeeded"


class _PaymentsSummary:
    def __init__(self, period: Period, owner: str | None, size: int) -> None:
        self.period, self.owner, self.size = period, owner, size
        # (currency, day) → [captured, refunded, ledger net]
        self.days: dict[tuple[str, date], list[int]] = {}

    def _totals(self, currency: str, day: date) -> list[int]:
        return self.days.setdefault((currency, day), [0, 0, 0])

    def add(self, rows: Sequence[Row]) -> None:
        for kind, _id, _payment, currency, amount, _settled, day in rows:
            self._totals(currency, day)[0 if kind == "capture" else 1] += abs(amount)

    def finish(self, connection: Connection) -> list[Row]:
        first, after = self.period.bounds()
        query = select(BalanceEntry.currency, BalanceEntry.amount, BalanceEntry.created_at).where(
            BalanceEntry.created_at >= first, BalanceEntry.created_at < after
        )
        if self.owner is not None:
            query = query.where(BalanceEntry.owner == self.owner)
        for chunk in stream(connection, query, self.size):
            for currency, amount, created in chunk:
                self._totals(currency, self.period.day(created))[2] += amount
        out: list[Row] = []
        for currency, day in sorted(self.days):
            captured, refunded, ledger = self.days[(currency, day)]
            net = captured - refunded
            out.append(
                (currency, day, captured, refunded, net, ledger, net - ledger,
                 "yes" if net == ledger else "no")
            )  # fmt: skip
        return out


class PaymentsReport:
    kind = "payments"
    title = "Payments"
    workload = "payments"
    columns = (
        Column("type"),
        Column("id"),
        Column("payment_id"),
        Column("currency"),
        Column("amount", Type.INT),
        Column("settled_at", Type.DATETIME),
        Column("day", Type.DATE),
    )
    summary_columns = (
        Column("currency"),
        Column("day", Type.DATE),
        Column("captured", Type.INT),
        Column("refunded", Type.INT),
        Column("net", Type.INT),
        Column("ledger_net", Type.INT),
        Column("difference", Type.INT),
        Column("reconciled"),
    )
    chart = Chart("Net per day (minor units)", "day", ("captured", "refunded", "net"))

    def chunks(
        self, connection: Connection, period: Period, owner: str | None, size: int
    ) -> Iterator[list[Row]]:
        first, after = period.bounds()
        captures = select(
            Payment.id,
            Payment.id.label("payment_id"),
            Payment.currency,
            Payment.amount_captured,
            Payment.settled_at,
        ).where(Payment.state == SUCCEEDED, Payment.settled_at >= first, Payment.settled_at < after)
        refunds = select(
            Refund.id, Refund.payment_id, Refund.currency, Refund.amount, Refund.settled_at
        ).where(Refund.state == SUCCEEDED, Refund.settled_at >= first, Refund.settled_at < after)
        if owner is not None:
            captures = captures.where(Payment.owner == owner)
            refunds = refunds.where(Refund.owner == owner)
        for kind, sign, query, order in (
            ("capture", 1, captures, (Payment.settled_at, Payment.id)),
            ("refund", -1, refunds, (Refund.settled_at, Refund.id)),
        ):
            for chunk in stream(connection, query.order_by(*order), size):
                yield [
                    (kind, row_id, payment_id, currency, sign * amount,
                     period.local(settled), period.day(settled))
                    for row_id, payment_id, currency, amount, settled in chunk
                ]  # fmt: skip

    def summary(self, period: Period, owner: str | None, size: int) -> _PaymentsSummary:
        return _PaymentsSummary(period, owner, size)
