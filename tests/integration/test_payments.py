"""Payments end to end: API processes, a real worker, the sandbox gateway over HTTP."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import redis
from sqlalchemy import Text, cast, func, inspect, select, update
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table

from conveyor.core import db
from conveyor.core.celery_app import get_celery
from conveyor.core.models import utcnow
from conveyor.workloads.payments import service
from conveyor.workloads.payments.models import BalanceEntry, GatewayEvent, Payment
from conveyor.workloads.payments.sandbox import core as cards
from conveyor.workloads.payments.tasks import RECONCILE_TASK
from tests.integration.conftest import Process, Stack, extra_api, wait_for
from tests.integration.payments_stack import EventReceiver, Payments, payments_fixture  # noqa: F401

PATH = "/api/v1/payments"


def balance(payment_id: str) -> int:
    with db.session_scope() as session:
        return service.balance_of(session, payment_id)


# --- 200 identical requests from several processes -----------------------------------------


def _stampede(
    urls: list[str], api_key: str, key: str, body: dict[str, Any], count: int, index: int,
    barrier: Any, results: Any,
) -> None:  # fmt: skip
    async def fire() -> list[tuple[int, str]]:
        headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
            barrier.wait(30)
            responses = await asyncio.gather(
                *(
                    client.post(urls[(index + n) % len(urls)] + PATH, json=body)
                    for n in range(count)
                )
            )
        return [(r.status_code, r.text) for r in responses]

    try:
        results.put((index, asyncio.run(fire())))
    except BaseException as exc:
        results.put((index, repr(exc)))


def test_200_identical_payment_requests_make_one_payment_and_one_charge(
    stack: Stack, payments: Payments
) -> None:
    processes, per_process = 4, 50
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    body = {
        "amount": 4200,
        "currency": "EUR",
        "customer_id": customer,
        "payment_method": "4242424242424242",
    }
    key = str(uuid.uuid4())
    api_key = stack.key_for(payments.owner)
    with extra_api(stack, "api-payments-2") as second:
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(processes)
        results = ctx.Queue()
        clients = [
            ctx.Process(
                target=_stampede,
                args=(
                    [stack.api_url, second],
                    api_key,
                    key,
                    body,
                    per_process,
                    i,
                    barrier,
                    results,
                ),
            )
            for i in range(processes)
        ]
        for client in clients:
            client.start()
        outcomes: list[tuple[int, str]] = []
        try:
            for _ in range(processes):
                index, got = results.get(timeout=120)
                assert isinstance(got, list), f"client process {index} failed: {got}"
                outcomes += got
        finally:
            for client in clients:
                client.join(30)
    assert len(outcomes) == processes * per_process
    statuses = Counter(status for status, _ in outcomes)
    assert set(statuses) <= {202, 409}, statuses
    ids = {
        httpx.Response(202, text=text).json()["id"] for status, text in outcomes if status == 202
    }
    assert len(ids) == 1, ids
    (payment_id,) = ids

    with payments.client() as client:
        paid = payments.wait_payment(client, payment_id, {"succeeded", "failed"})
        assert paid["status"] == "succeeded"
        listed = client.get(PATH, params={"customer_id": customer}).json()["items"]
        assert [item["id"] for item in listed] == [payment_id]
        # The same key with another amount is refused, naming the key.
        other = client.post(PATH, json={**body, "amount": 4300}, headers={"Idempotency-Key": key})
        assert other.status_code == 422
        assert "Idempotency-Key" in other.json()["detail"]
    assert payments.stats(payment_id)["key"]["charges"] == 1
    assert balance(payment_id) == 4200

    # The sandbox's own signed event reached the API and was recorded once.
    def event_recorded() -> bool:
        with db.session_scope() as session:
            count = session.scalar(
                select(func.count())
                .select_from(GatewayEvent)
                .where(GatewayEvent.payment_id == payment_id)
            )
        return count == 1

    wait_for(event_recorded, 20, "the sandbox's charge.succeeded event")


# --- kill -9 at each point of a charge -----------------------------------------------------

POINTS = ("requested", "returned", "settling")


def test_worker_killed_at_each_point_of_a_charge_charges_exactly_once(
    stack: Stack, payments: Payments
) -> None:
    crash_dir = stack.tmp / "payment-crashes"
    # No gateway events: the redelivered jobs alone must recover every payment.
    payments.configure(send_events=False)

    def restart_if_killed() -> bool:
        worker = stack.worker.process
        if worker is not None and worker.poll() is not None:
            # Killed at a crash point: start another, without waiting for it to answer
            # (the next crash point may kill it before it does).
            stack.worker = Process("worker", stack.worker.argv, stack.env, stack.worker.log_path)
            stack.worker.start()
            return True
        return False

    with payments.client() as client:
        ids: dict[str, str] = {}
        for n, point in enumerate(POINTS):
            # One payment at a time: a kill takes the whole worker with it, and a sibling
            # process caught past its own crash point would never stop there.
            ids[point] = payments.pay(client, cards.CARD_SUCCEEDS, 1000 + n, f"crash-{point}")["id"]
            crash = crash_dir / f"{ids[point]}-{point}"
            wait_for(crash.exists, 60, f"the worker to die at {point}", interval=0.1)
            wait_for(restart_if_killed, 10, "the killed worker to be replaced", interval=0.1)

        swept = [time.monotonic()]

        def recovered() -> bool:
            if time.monotonic() - swept[-1] > 10:
                # Beat's sweep: a charge whose message died with its worker is published
                # again (only `pending` payments: 3600 s keeps it off `processing` ones).
                swept.append(time.monotonic())
                get_celery().send_task(
                    RECONCILE_TASK,
                    kwargs={"older_than_seconds": 3600, "pending_older_than_seconds": 20},
                )
            if restart_if_killed():
                return False
            states = {client.get(f"{PATH}/{pid}").json()["status"] for pid in ids.values()}
            return states == {"succeeded"}

        try:
            wait_for(recovered, 150, "every crashed payment to succeed", interval=0.3)
        except AssertionError:
            for point, pid in ids.items():
                paid = client.get(f"{PATH}/{pid}").json()
                job = client.get(f"/api/v1/jobs/{paid['job_id']}").json()
                print(point, paid["status"], paid["attempts"], job["state"], job["attempts"])
            print(stack.worker.log_tail(200))
            raise
        wait_for(stack.worker_answers, 30, "the last worker to answer", interval=0.5)
        crashed = {path.name for path in crash_dir.iterdir()}
        assert crashed == {f"{ids[point]}-{point}" for point in POINTS}
        for n, point in enumerate(POINTS):
            paid = client.get(f"{PATH}/{ids[point]}").json()
            assert paid["amount_captured"] == 1000 + n
            assert payments.stats(ids[point])["key"]["charges"] == 1, point
            assert balance(ids[point]) == 1000 + n
            job = client.get(f"/api/v1/jobs/{paid['job_id']}").json()
            assert job["state"] == "succeeded"
            assert job["attempts"] >= 2  # the killed delivery and the one that finished
            assert paid["attempts"] >= 2
    payments.configure(send_events=True)


# --- timeouts, 5xx and declines -------------------------------------------------------------


def test_timeouts_and_5xx_lead_to_one_charge_and_a_decline_to_one_event(
    stack: Stack, payments: Payments
) -> None:
    receiver = EventReceiver()
    # No gateway events: only the status check may settle what timed out.
    payments.configure(send_events=False)
    try:
        with payments.client() as client:
            endpoint = client.post(
                "/api/v1/webhook-endpoints",
                json={"url": receiver.url, "events": ["payment.failed", "payment.succeeded"]},
            )
            assert endpoint.status_code in (200, 201), endpoint.text
            slow = payments.pay(client, cards.CARD_TIMES_OUT)["id"]
            flaky = payments.pay(client, cards.CARD_FAILS_ONCE)["id"]
            declined = payments.pay(client, cards.CARD_DECLINED)["id"]
            for payment_id in (slow, flaky):
                paid = payments.wait_payment(client, payment_id, {"succeeded", "failed"})
                assert paid["status"] == "succeeded"
                assert paid["attempts"] == 2
                counts = payments.stats(payment_id)["key"]
                assert counts["charges"] == 1
                assert counts["status_checks"] == 1  # asked before charging again
            assert payments.stats(slow)["key"]["charge_requests"] == 1  # never re-sent
            assert payments.stats(flaky)["key"]["charge_requests"] == 2  # nothing charged first

            failed = payments.wait_payment(client, declined, {"succeeded", "failed"})
            assert (failed["status"], failed["failure_code"]) == ("failed", "card_declined")
            assert failed["attempts"] == 1  # a decline is final: no retry
            assert balance(declined) == 0

            # Random 5xx before and after the gateway records the charge.
            payments.configure(error_rate=0.4)
            try:
                batch = [payments.pay(client, cards.CARD_SUCCEEDS, 300 + n)["id"] for n in range(8)]
                for payment_id in batch:
                    paid = payments.wait_payment(client, payment_id, {"succeeded", "failed"})
                    assert paid["status"] == "succeeded"
                    assert payments.stats(payment_id)["key"]["charges"] == 1
            finally:
                payments.configure(error_rate=0)

        def delivered() -> list[dict[str, Any]]:
            return [e for e in receiver.events if e["data"]["id"] in (slow, flaky, declined)]

        wait_for(lambda: len(delivered()) >= 3, 30, "three payment events")
        by_type = Counter((e["type"], e["data"]["id"]) for e in delivered())
        assert by_type == {
            ("payment.succeeded", slow): 1,
            ("payment.succeeded", flaky): 1,
            ("payment.failed", declined): 1,
        }
    finally:
        receiver.close()
        payments.configure(send_events=True)


# --- 20 concurrent refunds -----------------------------------------------------------------


def test_20_concurrent_refunds_of_10_against_100_exactly_10_succeed(
    stack: Stack, payments: Payments
) -> None:
    with payments.client() as client:
        payment_id = payments.pay(client, cards.CARD_SUCCEEDS, amount=100)["id"]
        payments.wait_payment(client, payment_id, {"succeeded"})
    api_key = stack.key_for(payments.owner)

    def refund(_: int) -> httpx.Response:
        headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": str(uuid.uuid4())}
        return httpx.post(
            f"{stack.api_url}{PATH}/{payment_id}/refunds",
            json={"amount": 10},
            headers=headers,
            timeout=30,
        )

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(refund, range(20)))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {202: 10, 422: 10}, statuses
    assert all(r.json()["detail"].startswith("amount:") for r in responses if r.status_code == 422)
    with payments.client() as client:

        def all_refunded() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"{PATH}/{payment_id}").json()
            done = [r for r in body["refunds"] if r["status"] == "succeeded"]
            return body if len(done) == 10 else None

        paid = wait_for(all_refunded, 60, "ten refunds to succeed")
    assert len(paid["refunds"]) == 10
    assert (paid["amount_refunded"], paid["amount_refund_pending"]) == (100, 0)
    assert balance(payment_id) == 0
    with db.session_scope() as session:
        row = session.get(Payment, payment_id)
        assert row is not None
        entries = session.scalar(
            select(func.count())
            .select_from(BalanceEntry)
            .where(BalanceEntry.payment_id == payment_id)
        )
        assert entries == 11  # one charge, ten refunds
        # No drift anywhere: every entry in the ledger matches captured minus refunded.
        total = session.scalar(select(func.coalesce(func.sum(BalanceEntry.amount), 0)))
        expected = session.scalar(
            select(func.coalesce(func.sum(Payment.amount_captured - Payment.amount_refunded), 0))
        )
        assert total == expected


# --- no card number kept ---------------------------------------------------------------------


def _tables_holding(text_: str) -> list[str]:
    """`table.column` for every column of every table whose text contains `text_`."""
    engine = db.get_engine()
    found = []
    with engine.connect() as connection:
        for name in inspect(engine).get_table_names():
            for column in inspect(engine).get_columns(name):
                where = cast(sql_column(column["name"]), Text).like(f"%{text_}%")
                count = connection.scalar(
                    select(func.count()).select_from(sql_table(name)).where(where)
                )
                if count:
                    found.append(f"{name}.{column['name']}")
    return found


def _redis_keys_holding(text_: str) -> list[str]:
    client = redis.Redis.from_url(stack_redis_url())
    found = []
    for key in client.scan_iter(count=500):
        text_of_key = " ".join(str(value) for value in _redis_values(client, key))
        if text_ in text_of_key:
            found.append(str(key))
    return found


def _redis_values(client: redis.Redis, key: Any) -> list[Any]:
    kind = client.type(key).decode()
    if kind == "string":
        return [client.get(key)]
    if kind == "hash":
        return list(client.hgetall(key).items())
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return list(client.zrange(key, 0, -1))
    if kind == "stream":
        entries: Any = client.xrange(key)
        return list(entries)
    return []


def stack_redis_url() -> str:
    from conveyor.core.settings import get_settings

    return get_settings().redis


def test_the_readme_flow_keeps_no_card_number_in_the_database_redis_or_logs(
    stack: Stack, payments: Payments
) -> None:
    number = cards.CARD_SUCCEEDS
    body = {"amount": 1999, "currency": "USD", "customer_id": "cus_1", "payment_method": number}
    with payments.client() as client:
        created = client.post(PATH, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert created.status_code == 202, created.text
        payment = created.json()
        assert (payment["payment_method"], payment["card"]) == (
            cards.PM_SUCCEEDS,
            {"brand": "visa", "last4": "4242"},
        )
        payments.wait_payment(client, payment["id"], {"succeeded"})
        refund = client.post(
            f"{PATH}/{payment['id']}/refunds",
            json={"amount": 500},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert refund.status_code == 202, refund.text

        def refunded() -> dict[str, Any] | None:
            shown: dict[str, Any] = client.get(f"{PATH}/{payment['id']}").json()
            return shown if shown["amount_refunded"] == 500 else None

        shown = wait_for(refunded, 60, "the refund to succeed")
        assert shown["card"] == {"brand": "visa", "last4": "4242"}
        assert number not in str(shown)
    assert "conveyor_payments.id" in _tables_holding(payment["id"])  # the search does find things
    assert _tables_holding(number) == []
    assert _redis_keys_holding(number) == []
    logs = {path.name: path.read_text(errors="replace") for path in stack.tmp.glob("*.log")}
    assert {"worker.log", "sandbox.log"} <= set(logs)
    assert [name for name, text_ in logs.items() if number in text_] == []


# --- reconciliation --------------------------------------------------------------------------


def test_reconciliation_settles_stuck_payments_and_lists_the_rest_for_review(
    stack: Stack, payments: Payments, admin: httpx.Client
) -> None:
    with db.session_scope() as session:
        stuck = [
            service.create_payment(
                session,
                service.NewPayment(payments.owner, "cus_stuck", 500, "USD", cards.PM_SUCCEEDS),
                job_id=str(uuid.uuid4()),
            ).id
            for _ in range(2)
        ]
        session.execute(
            update(Payment)
            .where(Payment.id.in_(stuck))
            .values(state="processing", attempts=1, processing_since=utcnow() - timedelta(hours=1))
        )
    charged, lost = stuck
    # `charged` reached the gateway before its worker vanished; `lost` never did.
    reply = httpx.post(
        f"{payments.sandbox_url}/v1/charges",
        json={"amount": 500, "currency": "USD", "payment_method": cards.PM_SUCCEEDS,
              "customer_id": "cus_stuck"},
        headers={"Idempotency-Key": charged},
    )  # fmt: skip
    assert reply.status_code == 200

    get_celery().send_task(RECONCILE_TASK, kwargs={"older_than_seconds": 600})
    with payments.client() as client:
        settled = payments.wait_payment(client, charged, {"succeeded"}, timeout=30)
        assert settled["amount_captured"] == 500
        review = payments.wait_payment(client, lost, {"requires_review"}, timeout=30)
        assert "no charge" in review["failure_message"]
        listed = client.get(f"{PATH}/review")
        assert listed.status_code == 403  # admins only
    items = admin.get(f"{PATH}/review", params={"limit": 200}).json()["items"]
    assert lost in {item["id"] for item in items}
    assert charged not in {item["id"] for item in items}
    assert payments.stats(charged)["key"]["charges"] == 1
    assert payments.stats(lost)["key"]["charges"] == 0
    assert balance(charged) == 500
