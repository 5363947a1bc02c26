"""Webhook endpoints: where Conveyor POSTs signed events (Standard Webhooks)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

import conveyor.webhooks.listener  # noqa: F401 - job outcomes seen by this process count too
from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.schemas import Problem
from conveyor.core.models import WebhookEndpoint
from conveyor.webhooks import events, service

router = APIRouter(
    prefix="/api/v1/webhook-endpoints", tags=["webhooks"], route_class=IdempotentRoute
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such endpoint (or not yours)."}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "model": Problem,
        "description": "Bad URL (not http(s), or a private address), or an unknown event type.",
    }
}

ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": "9f1c2e7a4b5d4c3e8f6a1b2c3d4e5f60",
    "owner": "acme",
    "url": "https://hooks.example.com/conveyor",
    "description": "Production receiver",
    "events": ["job.succeeded", "job.dead"],
    "enabled": True,
    "disabled_reason": None,
    "consecutive_failures": 0,
    "failing_since": None,
    "created_at": "2026-11-25T10:00:00+00:00",
    "updated_at": "2026-11-25T10:00:00+00:00",
}
SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a documentation example


class EndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/conveyor",
                    "events": ["job.succeeded", "job.dead"],
                    "description": "Production receiver",
                }
            ]
        },
    )

    url: str = Field(max_length=service.MAX_URL_LENGTH, description="An http(s) URL.")
    events: list[str] = Field(
        min_length=1, max_length=service.MAX_EVENTS, description="Event types to receive."
    )
    description: str | None = Field(default=None, max_length=500)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enabled": True}, {"events": ["job.dead"]}]},
    )

    url: str | None = Field(default=None, max_length=service.MAX_URL_LENGTH)
    events: list[str] | None = Field(default=None, min_length=1, max_length=service.MAX_EVENTS)
    enabled: bool | None = Field(
        default=None,
        description=(
            "true re-enables, resets the failure streak and sends the deliveries held while "
            "disabled, oldest first; false disables and holds new deliveries."
        ),
    )
    description: str | None = Field(default=None, max_length=500)


class EndpointOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ENDPOINT_EXAMPLE]})

    id: str
    owner: str
    url: str
    description: str | None
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int = Field(description="Failed attempts since the last success.")
    failing_since: str | None = Field(
        description=(
            "When the current failure streak began (null after a success); the endpoint is "
            "disabled once it has lasted CONVEYOR_WEBHOOK_DISABLE_AFTER_SECONDS."
        )
    )
    created_at: str | None
    updated_at: str | None


class EndpointCreated(EndpointOut):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**ENDPOINT_EXAMPLE, "secret": SECRET_EXAMPLE}]}
    )

    secret: str = Field(
        description="Signing secret for verifying deliveries. Shown only in this response."
    )


class EndpointPage(BaseModel):
    items: list[EndpointOut]


DeliveryStatus = Literal["pending", "succeeded", "failed", "paused", "skipped"]


class AttemptOut(BaseModel):
    attempt: int
    status_code: int | None
    duration_ms: float
    response_excerpt: str | None = Field(
        description="The start of the response body: at most 200 printable characters."
    )
    error: str | None
    created_at: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "msg_5b7c8d1e1f0a4a539a832f4f4c1f7d10",
                    "endpoint_id": ENDPOINT_EXAMPLE["id"],
                    "event_type": "job.succeeded",
                    "status": "succeeded",
                    "attempts": 2,
                    "last_status_code": 200,
                    "last_duration_ms": 41.7,
                    "last_error": None,
                    "next_attempt_at": None,
                    "created_at": "2026-11-25T10:00:00+00:00",
                    "delivered_at": "2026-11-25T10:00:05+00:00",
                    "payload": {
                        "type": "job.succeeded",
                        "timestamp": "2026-11-25T10:00:00.123456Z",
                        "data": {
                            "id": "5b7c8d1e-1f0a-4a53-9a83-2f4f4c1f7d10",
                            "state": "succeeded",
                        },
                    },
                    "attempt_log": [
                        {
                            "attempt": 1,
                            "status_code": 503,
                            "duration_ms": 12.5,
                            "response_excerpt": "upstream unavailable",
                            "error": "HTTP 503",
                            "created_at": "2026-11-25T10:00:00+00:00",
                        },
                        {
                            "attempt": 2,
                            "status_code": 200,
                            "duration_ms": 41.7,
                            "response_excerpt": "ok",
                            "error": None,
                            "created_at": "2026-11-25T10:00:05+00:00",
                        },
                    ],
                }
            ]
        }
    )

    id: str = Field(description="The webhook-id header: the same on every attempt.")
    endpoint_id: str
    event_type: str
    status: DeliveryStatus = Field(
        description=(
            "`paused`: held while the endpoint is disabled, sent when it is re-enabled; "
            "`skipped`: dropped by a disabled endpoint before events were held (old data)."
        )
    )
    attempts: int
    last_status_code: int | None
    last_duration_ms: float | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str | None
    delivered_at: str | None
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


class TestSent(BaseModel):
    delivery_id: str
    event_type: str = Field(examples=["webhook.test"])
    status: str = Field(examples=["pending"])


class EventTypes(BaseModel):
    items: dict[str, str] = Field(
        examples=[{"job.dead": "A job failed for good and is now a dead letter."}]
    )


def _endpoint(session: SessionDep, caller: CallerDep, endpoint_id: str) -> WebhookEndpoint:
    endpoint = service.get_endpoint(session, endpoint_id, caller.scope)
    if endpoint is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "webhook endpoint not found")
    return endpoint


def _unprocessable(exc: service.EndpointError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.post(
    "",
    response_model=EndpointCreated,
    status_code=status.HTTP_201_CREATED,
    responses=INVALID,
    summary="Register a webhook endpoint",
    description=(
        "Conveyor POSTs each subscribed event to `url` as JSON "
        '`{"type", "timestamp", "data"}`, signed per Standard Webhooks (`webhook-id`, '
        "`webhook-timestamp`, `webhook-signature` headers). The response holds the signing "
        "`secret`: store it, it is never shown again. URLs resolving to private, loopback, "
        "link-local or metadata addresses are refused unless the server allows private networks."
    ),
)
def create_endpoint(body: EndpointCreate, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    try:
        endpoint = service.create_endpoint(
            session, caller.owner, body.url, body.events, body.description
        )
    except service.EndpointError as exc:
        raise _unprocessable(exc) from None
    session.commit()
    return service.endpoint_to_dict(endpoint, with_secret=True)


@router.get(
    "",
    response_model=EndpointPage,
    summary="List webhook endpoints",
    description="Your endpoints; an admin key sees every owner's.",
)
def list_endpoints(caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    endpoints = service.list_endpoints(session, caller.scope)
    return {"items": [service.endpoint_to_dict(endpoint) for endpoint in endpoints]}


@router.get(
    "/event-types",
    response_model=EventTypes,
    summary="List the event types endpoints can subscribe to",
)
def list_event_types(_: CallerDep) -> dict[str, Any]:
    return {"items": events.event_types()}


@router.get(
    "/{endpoint_id}",
    response_model=EndpointOut,
    responses=NOT_FOUND,
    summary="Get a webhook endpoint (without its secret)",
)
def get_endpoint(endpoint_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    return service.endpoint_to_dict(_endpoint(session, caller, endpoint_id))


@router.patch(
    "/{endpoint_id}",
    response_model=EndpointOut,
    responses={**NOT_FOUND, **INVALID},
    summary="Change a webhook endpoint; re-enable a disabled one",
    description=(
        "Fields left out stay as they are. An endpoint whose deliveries failed, none "
        "succeeding, for `CONVEYOR_WEBHOOK_DISABLE_AFTER_SECONDS` (5 days) is disabled; its "
        "events are still recorded, as `paused` deliveries. `enabled: true` re-enables it, "
        "resets its failure streak and sends the paused deliveries, oldest first, each with "
        "its retries. `enabled: false` disables it and holds its deliveries the same way."
    ),
)
def update_endpoint(
    endpoint_id: str, body: EndpointUpdate, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    endpoint = _endpoint(session, caller, endpoint_id)
    try:
        service.update_endpoint(
            session,
            endpoint,
            url=body.url,
            event_types=body.events,
            enabled=body.enabled,
            description=body.description,
        )
    except service.EndpointError as exc:
        raise _unprocessable(exc) from None
    session.commit()
    return service.endpoint_to_dict(endpoint)


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Delete a webhook endpoint and its delivery log",
)
def delete_endpoint(endpoint_id: str, caller: CallerDep, session: SessionDep) -> Response:
    service.delete_endpoint(session, _endpoint(session, caller, endpoint_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryPage,
    responses=NOT_FOUND,
    summary="Recent deliveries to an endpoint, with every attempt",
)
def list_deliveries(
    endpoint_id: str,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
) -> dict[str, Any]:
    endpoint = _endpoint(session, caller, endpoint_id)
    rows = service.list_deliveries(session, endpoint.id, limit=limit, status=delivery_status)
    return {"items": [service.delivery_to_dict(delivery, attempts) for delivery, attempts in rows]}


@router.post(
    "/{endpoint_id}/test",
    response_model=TestSent,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "The endpoint is disabled."},
    },
    summary="Send a webhook.test event to the endpoint",
    description="Sent whatever the endpoint subscribes to; follow it in `/deliveries`.",
)
def send_test(endpoint_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    endpoint = _endpoint(session, caller, endpoint_id)
    if not endpoint.enabled:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "endpoint is disabled; PATCH enabled=true first"
        )
    delivery = service.send_test(session, endpoint)
    session.commit()  # publishes the delivery task
    return {"delivery_id": delivery.id, "event_type": delivery.event_type, "status": "pending"}
