"""Raw rows for the report tests, and the figures a report of them must show, computed here
from the rows themselves, independently of the reports workload."""

from __future__ import annotations

import random
import statistics
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from conveyor.core.models import Job
from conveyor.workloads.email.models import Email
from conveyor.workloads.images.models import Image, ImageVariant
from conveyor.workloads.payments.models import BalanceEntry, Payment, Refund

START, END = date(2026, 11, 1), date(2026, 11, 30)
INSIDE = datetime(2026, 11, 1, tzinfo=UTC)
OUTSIDE = datetime(2026, 12, 3, tzinfo=UTC)  # after the period: never counted


def _id() -> str:
    return uuid.uuid4().hex


def _p(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cut = statistics.quantiles(values, n=100, method="inclusive")
    return cut[round(fraction * 100) - 1]


@dataclass
class Expected:
    jobs: dict[tuple[str, str, str], tuple[Any, ...]] = field(default_factory=dict)
    emails: dict[str, tuple[int, ...]] = field(default_factory=dict)
    payments: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    images: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    job_ids: set[str] = field(default_factory=set)


def insert(session: Session, owner: str, seed: int, *, count: int = 40) -> Expected:
    """Rows of every kind for `owner`, some outside the period; what they must add up to."""
    rng = random.Random(seed)
    expected = Expected()
    tag = f"t{seed}"
    # Jobs.
    groups: dict[tuple[str, str, str], list[tuple[float | None, float | None]]] = defaultdict(list)
    for index in range(count):
        created = INSIDE + timedelta(days=rng.randrange(30), seconds=rng.randrange(86400))
        state = rng.choice(["succeeded", "failed", "dead"])
        started = created + timedelta(milliseconds=rng.randrange(1, 5000))
        finished = started + timedelta(milliseconds=rng.randrange(1, 9000))
        queue, name = rng.choice([("email", f"{tag}.send"), ("images", f"{tag}.variant")])
        job = Job(
            id=_id(), name=name, queue=queue, owner=owner, state=state,
            created_at=created, started_at=started, finished_at=finished,
        )  # fmt: skip
        session.add(job)
        expected.job_ids.add(job.id)
        groups[(queue, name, state)].append(
            ((started - created).total_seconds(), (finished - started).total_seconds())
        )
        if index % 10 == 0:
            session.add(Job(id=_id(), name=name, queue=queue, owner=owner, created_at=OUTSIDE))
    for key, pairs in groups.items():
        waits = sorted(w for w, _ in pairs if w is not None)
        runs = sorted(r for _, r in pairs if r is not None)
        expected.jobs[key] = (
            len(pairs),
            _p(waits, 0.5),
            _p(waits, 0.95),
            _p(runs, 0.5),
            _p(runs, 0.95),
        )
    # Emails: outcome per recipient.
    domains: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for index in range(count):
        status = rng.choice(["sent", "sent", "bounced", "suppressed", "queued"])
        to = [f"u{index}@{tag}-{rng.choice('abc')}.example", f"v{index}@{tag}-d.example"]
        skipped = [{"email": to[1], "name": ""}] if status == "sent" and index % 3 == 0 else []
        session.add(
            Email(
                id=_id(), owner=owner, status=status, message_id=f"<{_id()}@x>", sender="s@x.io",
                to=[{"email": a, "name": ""} for a in to], subject="s", text="t",
                skipped=skipped, created_at=INSIDE + timedelta(hours=index),
            )
        )  # fmt: skip
        for address in to:
            outcome = "suppressed" if skipped and skipped[0]["email"] == address else status
            counts = domains[address.rpartition("@")[2]]
            counts[0] += 1
            slot = {"sent": 1, "bounced": 2, "suppressed": 3}.get(outcome, 4)
            counts[slot] += 1
    expected.emails = {domain: tuple(values) for domain, values in domains.items()}
    # Payments: captures and refunds settle on a day; the ledger books each once.
    days: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    currency = "EUR" if seed % 2 else "USD"
    for index in range(count):
        amount = rng.randrange(100, 100_000)
        settled = INSIDE + timedelta(days=index % 30, hours=12)
        refunded = amount // 3 if index % 4 == 0 else 0
        payment = Payment(
            id=f"pay_{_id()}", owner=owner, customer_id="c", amount=amount, currency=currency,
            payment_method="pm", state="succeeded", amount_captured=amount,
            amount_refunded=refunded, settled_at=settled, created_at=settled,
        )  # fmt: skip
        session.add(payment)
        session.flush()
        session.add(BalanceEntry(entry_key=f"charge:{payment.id}", payment_id=payment.id,
                                 owner=owner, kind="charge", amount=amount, currency=currency,
                                 created_at=settled))  # fmt: skip
        day = days[(currency, settled.date().isoformat())]
        day[0] += amount
        day[2] += amount
        if refunded:
            refund = Refund(id=f"re_{_id()}", payment_id=payment.id, owner=owner,
                            amount=refunded, currency=currency, state="succeeded",
                            settled_at=settled + timedelta(hours=1))  # fmt: skip
            session.add(refund)
            session.add(BalanceEntry(entry_key=f"refund:{refund.id}", payment_id=payment.id,
                                     refund_id=refund.id, owner=owner, kind="refund",
                                     amount=-refunded, currency=currency,
                                     created_at=settled + timedelta(hours=1)))  # fmt: skip
            day[1] += refunded
            day[2] -= refunded
    expected.payments = {
        key: (c, r, c - r, ledger, c - r - ledger, "yes" if c - r == ledger else "no")
        for key, (c, r, ledger) in days.items()
    }
    # Images: bytes out are the finished variants' outputs.
    presets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for index in range(count // 2):
        preset = f"{tag}-{rng.choice(['web', 'avatar'])}"
        status = rng.choice(["processed", "failed", "partially_processed"])
        source = rng.randrange(10_000, 900_000)
        image = Image(id=_id(), owner=owner, preset=preset, status=status, source_bytes=source,
                      source_format="jpeg", created_at=INSIDE + timedelta(hours=index))  # fmt: skip
        session.add(image)
        session.flush()
        out = 0
        for position, variant_status in enumerate(["done", "failed", "done"]):
            made = rng.randrange(1000, 50_000)
            session.add(ImageVariant(image_id=image.id, name=f"v{position}", position=position,
                                     status=variant_status,
                                     outputs=[{"format": "webp", "bytes": made}]))  # fmt: skip
            out += made if variant_status == "done" else 0
        totals = presets[preset]
        totals[0] += 1
        totals[1] += status != "failed"
        totals[2] += source
        totals[3] += out
    expected.images = {
        preset: (n, done, bin_, bout, bin_ - bout)
        for preset, (n, done, bin_, bout) in presets.items()
    }
    session.commit()
    return expected
