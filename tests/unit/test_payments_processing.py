"""Charging, refunding and reconciling against the sandbox's logic in process (SQLite file)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from conveyor.core.models import utcnow
from conveyor.workloads.payments import processing, service
from conveyor.workloads.payments.gateway import GatewayTimeout, GatewayUnavailable
from conveyor.workloads.payments.models import BalanceEntry, Payment, Refund
from conveyor.workloads.payments.sandbox import core as cards
from conveyor.workloads.payments.sandbox.client import InProcessGateway
from conveyor.workloads.payments.sandbox.core import SandboxCore

Sessions = Callable[[], Session]


@pytest.fixture
def sessions(engine: Engine) -> Sessions:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def sandbox() -> SandboxCore:
    return SandboxCore()


@pytest.fixture
def gateway(sandbox: SandboxCore) -> InProcessGateway:
    return InProcessGateway(sandbox, timeout=5.0)


def new_payment(sessions: Sessions, method: str = cards.PM_SUCCEEDS, amount: int = 1999) -> str:
    with sessions() as session:
        payment = service.create_payment(
            session,
            service.NewPayment("alice", "cus_1", amount, "USD", method),
            job_id="job-1",
        )
        session.commit()
        return payment.id


def payment(sessions: Sessions, payment_id: str) -> Payment:
    with sessions() as session:
        found = session.get(Payment, payment_id)
        assert found is not None
        return found


def balance(sessions: Sessions, payment_id: str) -> int:
    with sessions() as session:
        return service.balance_of(session, payment_id)


def test_charge_succeeds_once_and_books_one_entry(
    sessions: Sessions, gateway: InProcessGateway, sandbox: SandboxCore
) -> None:
    payment_id = new_payment(sessions)
    first = processing.charge(sessions, gateway, payment_id)
    again = processing.charge(sessions, gateway, payment_id)
    assert first["status"] == "succeeded"
    assert again == {"payment_id": payment_id, "status": "succeeded", "charged": False}
    row = payment(sessions, payment_id)
    assert (row.state, row.amount_captured, row.attempts) == ("succeeded", 1999, 1)
    assert balance(sessions, payment_id) == 1999
    assert sandbox.stats(payment_id)["key"]["charges"] == 1


def test_the_gateways_card_details_fill_in_what_the_api_did_not_know(
    sessions: Sessions, gateway: InProcessGateway
) -> None:
    payment_id = new_payment(sessions, "pm_card_mastercard")
    processing.charge(sessions, gateway, payment_id)
    row = payment(sessions, payment_id)
    assert (row.card_brand, row.card_last4) == ("mastercard", "4444")


def test_decline_fails_the_payment_without_retry(
    sessions: Sessions, gateway: InProcessGateway
) -> None:
    payment_id = new_payment(sessions, cards.PM_DECLINED)
    result = processing.charge(sessions, gateway, payment_id)
    assert result["status"] == "failed"
    row = payment(sessions, payment_id)
    assert (row.state, row.failure_code, row.amount_captured) == ("failed", "card_declined", 0)
    assert balance(sessions, payment_id) == 0


def test_timeout_is_settled_by_status_check_not_a_second_charge(
    sessions: Sessions, sandbox: SandboxCore
) -> None:
    gateway = InProcessGateway(sandbox, timeout=1.0)
    sandbox.config.slow_seconds = 5.0
    payment_id = new_payment(sessions, cards.PM_TIMES_OUT)
    with pytest.raises(GatewayTimeout):
        processing.charge(sessions, gateway, payment_id)
    assert payment(sessions, payment_id).state == "processing"
    processing.charge(sessions, gateway, payment_id)
    stats = sandbox.stats(payment_id)["key"]
    assert stats == {"charges": 1, "charge_requests": 1, "status_checks": 1, "refunds": 0}
    assert payment(sessions, payment_id).state == "succeeded"
    assert balance(sessions, payment_id) == 1999


def test_5xx_before_charging_is_retried_with_the_same_key(
    sessions: Sessions, gateway: InProcessGateway, sandbox: SandboxCore
) -> None:
    payment_id = new_payment(sessions, cards.PM_FAILS_ONCE)
    with pytest.raises(GatewayUnavailable):
        processing.charge(sessions, gateway, payment_id)
    processing.charge(sessions, gateway, payment_id)
    stats = sandbox.stats(payment_id)["key"]
    # Asked first (nothing there), then charged under the same key.
    assert stats == {"charges": 1, "charge_requests": 2, "status_checks": 1, "refunds": 0}
    assert payment(sessions, payment_id).state == "succeeded"


def test_concurrent_refunds_never_exceed_the_capture(
    sessions: Sessions, gateway: InProcessGateway, sandbox: SandboxCore
) -> None:
    payment_id = new_payment(sessions, amount=100)
    processing.charge(sessions, gateway, payment_id)
    accepted: list[str] = []
    refused: list[int] = []
    start = threading.Barrier(20)

    def ask() -> None:
        start.wait()
        with sessions() as session:
            row = session.get(Payment, payment_id)
            assert row is not None
            try:
                refund = service.reserve_refund(session, row, 10, job_id="j")
                session.commit()
                accepted.append(refund.id)
            except service.RefundRefused as exc:
                session.rollback()
                refused.append(exc.status_code)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 10
    assert refused == [422] * 10
    for refund_id in accepted:
        assert processing.refund(sessions, gateway, refund_id)["status"] == "succeeded"
    row = payment(sessions, payment_id)
    assert (row.amount_refunded, row.amount_refund_pending) == (100, 0)
    assert balance(sessions, payment_id) == 0
    assert sandbox.stats()["refunds"] == 10


def test_refund_the_gateway_refuses_releases_its_reservation(
    sessions: Sessions, gateway: InProcessGateway
) -> None:
    payment_id = new_payment(sessions, amount=100)
    processing.charge(sessions, gateway, payment_id)
    with sessions() as session:
        row = session.get(Payment, payment_id)
        assert row is not None
        refund = service.reserve_refund(session, row, 60, job_id="j")
        session.commit()
    # The charge id is lost: the gateway refuses, so the refund fails and frees the 60.
    with sessions() as session:
        session.execute(update(Payment).values(gateway_charge_id="ch_unknown"))
        session.commit()
    assert processing.refund(sessions, gateway, refund.id)["status"] == "failed"
    row = payment(sessions, payment_id)
    assert (row.amount_refunded, row.amount_refund_pending) == (0, 0)
    assert balance(sessions, payment_id) == 100


def test_refund_of_unsettled_payment_is_409(sessions: Sessions) -> None:
    payment_id = new_payment(sessions)
    with sessions() as session:
        row = session.get(Payment, payment_id)
        assert row is not None
        with pytest.raises(service.RefundRefused) as refused:
            service.reserve_refund(session, row, 10, job_id="j")
    assert refused.value.status_code == 409


def test_reconcile_settles_found_charges_and_parks_the_rest(
    sessions: Sessions, gateway: InProcessGateway
) -> None:
    charged = new_payment(sessions)
    lost = new_payment(sessions)
    fresh = new_payment(sessions)
    # `charged` reached the gateway but its worker died before saving; `lost` never did.
    gateway.charge(processing._start_charge(sessions, charged).request)  # type: ignore[union-attr]
    processing._start_charge(sessions, lost)
    processing._start_charge(sessions, fresh)
    an_hour_ago = utcnow() - timedelta(hours=1)
    with sessions() as session:
        session.execute(
            update(Payment)
            .where(Payment.id.in_([charged, lost]))
            .values(processing_since=an_hour_ago)
        )
        session.commit()
    counts = processing.reconcile(sessions, gateway, older_than=600)
    assert counts == {"settled": 1, "review": 1, "unchanged": 0}
    assert payment(sessions, charged).state == "succeeded"
    assert payment(sessions, lost).state == "requires_review"
    assert payment(sessions, fresh).state == "processing"  # not stuck yet
    # A redelivered charge never charges a payment under review.
    assert processing.charge(sessions, gateway, lost)["charged"] is False
    with sessions() as session:
        entries = session.scalar(select(func.count()).select_from(BalanceEntry))
        assert entries == 1
        assert session.scalar(select(func.count()).select_from(Refund)) == 0


def test_unstarted_charges_and_refunds_are_published_again(
    sessions: Sessions, gateway: InProcessGateway
) -> None:
    lost = new_payment(sessions)
    fresh = new_payment(sessions)
    charged = new_payment(sessions, amount=100)
    processing.charge(sessions, gateway, charged)
    with sessions() as session:
        row = session.get(Payment, charged)
        assert row is not None
        refund_id = service.reserve_refund(session, row, 10, job_id="job-r").id
        session.execute(
            update(Payment)
            .where(Payment.id.in_([lost, charged]))
            .values(created_at=utcnow() - timedelta(hours=1))
        )
        session.execute(update(Refund).values(created_at=utcnow() - timedelta(hours=1)))
        session.commit()
    published: list[tuple[str, str, str | None]] = []
    count = processing.requeue_unstarted(
        sessions, lambda *args: published.append(args), older_than=600
    )
    assert count == 2
    assert sorted(published) == [("charge", lost, "job-1"), ("refund", refund_id, "job-r")]
    assert fresh not in {target for _, target, _ in published}
