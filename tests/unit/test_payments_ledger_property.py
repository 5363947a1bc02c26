"""Property: whatever the sequence of payments, refunds, duplicate runs and crashes, the
balance ledger matches the payments, and the gateway moved each amount once.

Drives the service layer directly against a real database (a SQLite file, and PostgreSQL
when reachable) with the sandbox's own logic in process as the gateway. A crash is an
exception at a chosen point of a run; the run's uncommitted work is rolled back, as when a
worker dies.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.core import db
from conveyor.core.models import Base
from conveyor.workloads.payments import hooks, processing, service
from conveyor.workloads.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayUnavailable,
    RefundRequest,
    RefundResult,
)
from conveyor.workloads.payments.models import (
    BalanceEntry,
    GatewayEvent,
    Payment,
    Refund,
)
from conveyor.workloads.payments.sandbox import core as cards
from conveyor.workloads.payments.sandbox.client import InProcessGateway
from conveyor.workloads.payments.sandbox.core import SandboxCore

PG_ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# Mostly cards that succeed, so that refunds have something to work on.
CARDS = [
    cards.PM_SUCCEEDS,
    cards.PM_SUCCEEDS,
    cards.PM_DECLINED,
    cards.PM_FAILS_ONCE,
    cards.PM_TIMES_OUT,
]
CHARGE_CRASHES = [None, "requested", "returned", "settling"]
REFUND_CRASHES = [None, "before", "after"]


class Crash(BaseException):
    """A worker dying at this point (a BaseException: signal dispatch does not swallow it)."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def money_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = db.build_engine(f"sqlite:///{tmp_path_factory.mktemp('money') / 'p.db'}")
        Base.metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}".splitlines()[0])
    name = f"conveyor_prop_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    engine = db.build_engine(f"{base}/{name}")
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass
class CrashingGateway:
    """The in-process sandbox, dying before or after a refund call when told to."""

    inner: InProcessGateway
    crash: str | None = None

    def charge(self, request: ChargeRequest) -> ChargeResult:
        return self.inner.charge(request)

    def find_charge(self, key: str) -> ChargeResult | None:
        return self.inner.find_charge(key)

    def refund(self, request: RefundRequest) -> RefundResult:
        if self.crash == "before":
            raise Crash("before the refund call")
        result = self.inner.refund(request)
        if self.crash == "after":
            raise Crash("after the refund call")
        return result

    def find_refund(self, key: str) -> RefundResult | None:
        return self.inner.find_refund(key)


@dataclass
class ChargeCrashes:
    """Receivers on the charge hooks that raise at the armed point."""

    point: str | None = None
    receivers: list[Callable[..., None]] = field(default_factory=list)

    def connect(self) -> None:
        for name, signal in (
            ("requested", hooks.charge_requested),
            ("returned", hooks.charge_returned),
            ("settling", hooks.charge_settling),
        ):

            def receiver(sender: Any = None, _point: str = name, **_: Any) -> None:
                if self.point == _point:
                    raise Crash(_point)

            self.receivers.append(receiver)
            signal.connect(receiver, weak=False)

    def disconnect(self) -> None:
        for signal in (hooks.charge_requested, hooks.charge_returned, hooks.charge_settling):
            for receiver in self.receivers:
                signal.disconnect(receiver)


@pytest.fixture(scope="module")
def crashes() -> Iterator[ChargeCrashes]:
    armed = ChargeCrashes()
    armed.connect()
    yield armed
    armed.disconnect()


operation = st.one_of(
    st.tuples(st.just("pay"), st.integers(1, 100), st.sampled_from(CARDS)),
    st.tuples(st.just("charge"), st.integers(0, 3), st.sampled_from(CHARGE_CRASHES)),
    st.tuples(st.just("refund"), st.integers(0, 3), st.integers(1, 60)),
    st.tuples(st.just("run_refund"), st.integers(0, 9), st.sampled_from(REFUND_CRASHES)),
)


def _clear(sessions: Callable[[], Session]) -> None:
    with sessions() as session:
        for model in (BalanceEntry, GatewayEvent, Refund, Payment):
            session.execute(delete(model))
        session.commit()


def _check(sessions: Callable[[], Session], sandbox: SandboxCore, *, drained: bool) -> None:
    with sessions() as session:
        payments = list(session.scalars(select(Payment)))
        for row in payments:
            booked = service.balance_of(session, row.id)
            assert booked == row.amount_captured - row.amount_refunded, row.id
            assert 0 <= row.amount_refunded + row.amount_refund_pending <= row.amount_captured
            pending = session.scalar(
                select(func.coalesce(func.sum(Refund.amount), 0)).where(
                    Refund.payment_id == row.id,
                    Refund.state.in_(("pending", "processing", "requires_review")),
                )
            )
            assert row.amount_refund_pending == pending
        total = session.scalar(select(func.coalesce(func.sum(BalanceEntry.amount), 0)))
    stats = sandbox.stats()
    assert stats["duplicate_charges"] == 0
    if drained:
        # Everything settled: what the gateway moved is exactly what the ledger says.
        assert all(row.state in ("succeeded", "failed") for row in payments)
        assert total == stats["amount_captured"] - stats["amount_refunded"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=4, max_size=30))
def test_ledger_matches_payments_whatever_happens(
    money_engine: Engine, crashes: ChargeCrashes, ops: list[tuple[Any, ...]]
) -> None:
    sessions = sessionmaker(money_engine, expire_on_commit=False)
    _clear(sessions)
    sandbox = SandboxCore()
    sandbox.config.slow_seconds = 10.0
    gateway = CrashingGateway(InProcessGateway(sandbox, timeout=1.0))
    payment_ids: list[str] = []
    refund_ids: list[str] = []

    def run(fn: Callable[..., Any], target: str) -> None:
        # The worker died, or the gateway did not answer: a later run picks up.
        with contextlib.suppress(Crash, GatewayUnavailable):
            fn(sessions, gateway, target)

    for op in ops:
        kind = op[0]
        if kind == "pay":
            with sessions() as session:
                new = service.NewPayment("owner", "cus", op[1], "USD", op[2])
                payment_ids.append(service.create_payment(session, new, job_id="j").id)
                session.commit()
        elif kind == "charge" and payment_ids:
            crashes.point = op[2]
            target = payment_ids[op[1] % len(payment_ids)]
            run(processing.charge, target)
            crashes.point = None
        elif kind == "refund" and payment_ids:
            with sessions() as session:
                row = session.get(Payment, payment_ids[op[1] % len(payment_ids)])
                assert row is not None
                try:
                    refund_ids.append(service.reserve_refund(session, row, op[2], job_id="j").id)
                    session.commit()
                except service.RefundRefused:
                    session.rollback()
        elif kind == "run_refund" and refund_ids:
            gateway.crash = op[2]
            target = refund_ids[op[1] % len(refund_ids)]
            run(processing.refund, target)
            gateway.crash = None
        _check(sessions, sandbox, drained=False)

    # Recovery: every run again until nothing is left unsettled, as redeliveries would.
    for _ in range(3):
        for payment_id in payment_ids:
            run(processing.charge, payment_id)
        for refund_id in refund_ids:
            run(processing.refund, refund_id)
    _check(sessions, sandbox, drained=True)
    for payment_id in payment_ids:
        assert sandbox.stats(payment_id)["key"]["charges"] <= 1


def test_a_crash_between_gateway_and_save_is_recovered_without_a_second_charge(
    tmp_path: Path, crashes: ChargeCrashes
) -> None:
    """The sharpest case on its own: the gateway charged, the worker died before saving."""
    engine = db.build_engine(f"sqlite:///{tmp_path / 'one.db'}")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    sandbox = SandboxCore()
    gateway = InProcessGateway(sandbox)
    with sessions() as session:
        payment_id = service.create_payment(
            session, service.NewPayment("o", "c", 700, "JPY", cards.PM_SUCCEEDS), job_id="j"
        ).id
        session.commit()
    for point in ("returned", "settling"):
        crashes.point = point
        with pytest.raises(Crash):
            processing.charge(sessions, gateway, payment_id)
    crashes.point = None
    processing.charge(sessions, gateway, payment_id)
    assert sandbox.stats(payment_id)["key"] == {
        "charges": 1,
        "charge_requests": 1,
        "status_checks": 2,
        "refunds": 0,
    }
    with sessions() as session:
        assert service.balance_of(session, payment_id) == 700
    engine.dispose()
