"""HTTP routes of the payments workload.

POST routes need an Idempotency-Key (same key and body: the same answer; another body:
422; still running: 409). Amounts are integer minor units.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import AdminDep, CallerDep, SessionDep
from conveyor.api.idempotency import IdempotencyRequiredRoute
from conveyor.api.schemas import Problem
from conveyor.core.db import session_scope
from conveyor.core.jobs import Submission, submit
from conveyor.core.settings import section
from conveyor.workloads.payments import cards, gateway_events, service
from conveyor.workloads.payments import events as _events  # noqa: F401 - registers event types
from conveyor.workloads.payments.gateway import RefundResult
from conveyor.workloads.payments.models import PaymentState
from conveyor.workloads.payments.schemas import (
    PaymentIn,
    PaymentOut,
    PaymentPage,
    RefundIn,
    RefundOut,
)
from conveyor.workloads.payments.settings import PaymentsSettings
from conveyor.workloads.payments.settlement import settle_refund
from conveyor.workloads.payments.tasks import CHARGE_TASK, REFUND_TASK

router = APIRouter(
    prefix="/api/v1/payments", tags=["payments"], route_class=IdempotencyRequiredRoute
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such payment visible to this key."}
}


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "payment not found")


def _submit(task_name: str, target_id: str, owner: str, job_id: str) -> None:
    submit(Submission(task_name=task_name, args=[target_id], owner=owner, job_id=job_id))


def _create_payment(body: PaymentIn, owner: str) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    gateway = section(PaymentsSettings).payments_gateway
    try:
        method = cards.stored_method(body.payment_method, gateway)
    except cards.BadPaymentMethod as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    new = service.NewPayment(
        owner=owner,
        customer_id=body.customer_id,
        amount=body.amount,
        currency=body.currency,
        payment_method=method.reference,
        description=body.description,
        card_brand=method.brand,
        card_last4=method.last4,
    )
    with session_scope() as session:
        payment = service.create_payment(session, new, job_id=job_id)
    try:
        _submit(CHARGE_TASK, payment.id, owner, job_id)
    except Exception as exc:
        # Never charged, and a retry with the same Idempotency-Key makes a new payment.
        with session_scope() as session:
            service.fail_unqueued(session, payment.id, f"could not queue the charge: {exc}")
        raise
    return service.payment_to_dict(payment, [])


@router.post(
    "",
    response_model=PaymentOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Create a payment",
    description=(
        "Records the payment as `pending` and queues its charge; poll `GET /{id}` or "
        "subscribe to `payment.succeeded` / `payment.failed`. `amount` is integer minor "
        "units of `currency` (1999 = 19.99 USD). Needs an `Idempotency-Key` header."
    ),
)
async def create_payment(body: PaymentIn, caller: CallerDep) -> dict[str, Any]:
    return await run_in_threadpool(_create_payment, body, caller.owner)


def _create_refund(payment_id: str, body: RefundIn, owner: str | None) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    with session_scope() as session:
        payment = service.get_payment(session, payment_id, owner)
        if payment is None:
            raise _not_found()
        try:
            refund = service.reserve_refund(session, payment, body.amount, job_id=job_id)
        except service.RefundRefused as exc:
            raise HTTPException(exc.status_code, exc.message) from None
        payment_owner = payment.owner
    try:
        _submit(REFUND_TASK, refund.id, payment_owner, job_id)
    except Exception as exc:
        with session_scope() as session:
            settle_refund(
                session,
                refund.id,
                RefundResult("failed", None, 0, "not_queued", f"could not queue: {exc}"),
            )
        raise
    return service.refund_to_dict(refund)


@router.post(
    "/{payment_id}/refunds",
    response_model=RefundOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "The payment has not succeeded."},
    },
    summary="Refund a payment, in part or in full",
    description=(
        "Reserves `amount` on the payment at once: concurrent refunds can never add up to "
        "more than was captured (422 names `amount` when they would). Needs an "
        "`Idempotency-Key` header."
    ),
)
async def create_refund(payment_id: str, body: RefundIn, caller: CallerDep) -> dict[str, Any]:
    return await run_in_threadpool(_create_refund, payment_id, body, caller.scope)


def _page(
    session: Session, owner: str | None, customer_id: str | None, state: str | None,
    limit: int, cursor: str | None,
) -> dict[str, Any]:  # fmt: skip
    try:
        rows, next_cursor = service.list_payments(
            session, owner=owner, customer_id=customer_id, state=state, limit=limit, cursor=cursor
        )
    except service.BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return {"items": [service.payment_to_dict(row) for row in rows], "next_cursor": next_cursor}


Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=500, description="`next_cursor` of a page.")]


@router.get("", response_model=PaymentPage, summary="List payments, newest first")
def list_payments(
    caller: CallerDep,
    session: SessionDep,
    customer_id: Annotated[str | None, Query(max_length=120)] = None,
    status_: Annotated[PaymentState | None, Query(alias="status")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    return _page(session, caller.scope, customer_id, status_, limit, cursor)


@router.get(
    "/review",
    response_model=PaymentPage,
    summary="Payments that require review (admin)",
    description=(
        "Payments whose outcome the gateway could not tell (it never answered, or the "
        "reconciler found no charge). Settle each with the gateway's dashboard; a late "
        "gateway event or answer settles it too."
    ),
)
def list_review(
    caller: AdminDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    return _page(session, None, None, PaymentState.REQUIRES_REVIEW, limit, cursor)


# Plain routes: a gateway event is deduplicated by its own id, not an Idempotency-Key.
gateway_router = APIRouter(tags=["payments"])


@gateway_router.post(
    "/gateway-events",
    summary="Events from the payment gateway (signed)",
    description=(
        "Called by the gateway, not by clients: Standard Webhooks headers signed with "
        "CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET. Each event id is applied once."
    ),
    responses={400: {"model": Problem}, 401: {"model": Problem}, 503: {"model": Problem}},
)
async def gateway_event(request: Request) -> dict[str, Any]:
    secret = section(PaymentsSettings).payments_gateway_webhook_secret
    if secret is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "gateway events are not configured: set CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET",
        )
    body = await request.body()
    try:
        event = gateway_events.parse_verified(
            secret.get_secret_value(), dict(request.headers), body
        )
    except gateway_events.WebhookVerificationError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"signature: {exc}") from None
    except gateway_events.BadEvent as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None

    def apply() -> tuple[bool, str]:
        with session_scope() as session:
            return gateway_events.apply_event(session, event)

    first, outcome = await run_in_threadpool(apply)
    return {"id": event["id"], "duplicate": not first, "outcome": outcome}


@router.get(
    "/{payment_id}", response_model=PaymentOut, responses=NOT_FOUND, summary="Get a payment"
)
def get_payment(payment_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    payment = service.get_payment(session, payment_id, caller.scope)
    if payment is None:
        raise _not_found()
    return service.payment_to_dict(payment, service.refunds_of(session, payment.id))


@router.get(
    "/{payment_id}/refunds/{refund_id}",
    response_model=RefundOut,
    responses=NOT_FOUND,
    summary="Get a refund",
)
def get_refund(
    payment_id: str, refund_id: str, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    refund = service.get_refund(session, refund_id, caller.scope)
    if refund is None or refund.payment_id != payment_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "refund not found")
    return service.refund_to_dict(refund)


# Signed by the gateway, not sent by a signed-in caller: mounted outside the app's auth.
public_router = APIRouter(prefix="/api/v1/payments")
public_router.include_router(gateway_router)
