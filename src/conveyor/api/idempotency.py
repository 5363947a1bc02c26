"""Idempotency-Key on creating routes: a router opts in with one line.

    router = APIRouter(prefix="/api/v1/things", route_class=IdempotentRoute)
    router = APIRouter(prefix="/api/v1/payments", route_class=IdempotencyRequiredRoute)

Every POST route of such a router honours the header (a single route elsewhere can opt in
with `router.add_api_route(..., route_class_override=IdempotentRoute)`). The key is claimed
after authentication and body validation, so a rejected request never uses up a key, and
the response FastAPI actually sends (status, JSON body, headers) is what gets stored and
replayed. The rules live in conveyor.core.idempotency.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, ClassVar

import anyio
from fastapi import Header, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import Caller, CallerDep
from conveyor.api.schemas import Problem
from conveyor.core import idempotency
from conveyor.core.db import session_factory
from conveyor.core.settings import get_settings

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENT_METHODS = frozenset({"POST"})
# Where the claimed record's id waits between the endpoint and the response.
STATE_ATTRIBUTE = "conveyor_idempotency_record"
# Parameters added to the endpoint's signature; FastAPI resolves them like any other.
_REQUEST = "conveyor_idempotency_request"
_RESPONSE = "conveyor_idempotency_response"
_CALLER = "conveyor_idempotency_caller"
_KEY = "conveyor_idempotency_key"

KEY_DESCRIPTION = (
    "A unique value (a UUID) per operation. Retrying with the same key and body returns the "
    "first response again, with `Idempotent-Replayed: true`, instead of repeating the "
    "operation. Keys are scoped to the API key's owner and kept "
    "CONVEYOR_IDEMPOTENCY_TTL_SECONDS (24 hours by default)."
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": f"Missing or malformed {HEADER}."},
    409: {"model": Problem, "description": f"A request with this {HEADER} is still running."},
    422: {
        "model": Problem,
        "description": f"Invalid body, or this {HEADER} was used for a different request.",
    },
}

Endpoint = Callable[..., Any]


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One idempotency operation in its own session (each commits on its own)."""
    with session_factory()() as session:
        return fn(session, *args, **kwargs)


async def _claim(
    request: Request, caller: Caller, key: str | None, required: bool
) -> Response | None:
    """Claim the key; a replayed Response, None to run the endpoint, or an HTTP error."""
    if key is None:
        if required:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"this route needs an {HEADER} header: a new unique value (a UUID) per "
                "operation, sent again unchanged when retrying it",
            )
        return None
    try:
        idempotency.validate_key(key)
    except idempotency.InvalidKey as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    body = await request.body()  # cached: FastAPI already read it (or we did, for forms)
    body = _without_boundary(body, request.headers.get("content-type"))
    query = request.url.query
    target = request.url.path + (f"?{query}" if query else "")
    claim: idempotency.Claim = await run_in_threadpool(
        _run,
        idempotency.begin,
        owner=caller.owner,
        key=key,
        method=request.method,
        path=request.url.path,
        fingerprint=idempotency.request_hash(request.method, target, body),
        ttl_seconds=get_settings().idempotency_ttl_seconds,
    )
    if claim.outcome is idempotency.Outcome.PROCEED:
        setattr(request.state, STATE_ATTRIBUTE, claim.record_id)
        return None
    if claim.outcome is idempotency.Outcome.REPLAY:
        assert claim.response is not None
        stored = claim.response
        return Response(
            content=stored.body,
            status_code=stored.status_code,
            headers={**stored.headers, REPLAYED_HEADER: "true"},
        )
    if claim.outcome is idempotency.Outcome.IN_FLIGHT:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"a request with this {HEADER} is still being handled; retry it shortly",
            headers={"Retry-After": "1"},
        )
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"this {HEADER} was already used for a different request ({claim.method} "
        f"{claim.path} with another body); send a new key for a new request",
    )


def _without_boundary(body: bytes, content_type: str | None) -> bytes:
    """A multipart body with its boundary taken out: clients pick a new random boundary
    for every request, so a retried upload would otherwise never match its first try."""
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != "multipart/form-data":
        return body
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return body.replace(b"--" + value.strip('"').encode("latin-1"), b"--")
    return body


def _shared_or_added(
    signature: inspect.Signature, kind: type[Any], name: str
) -> tuple[str, inspect.Parameter | None]:
    """FastAPI fills one parameter per special type (Request, Response): reuse the
    endpoint's own if it has one, else add ours. Returns (its name, the added parameter)."""
    for param in signature.parameters.values():
        if inspect.isclass(param.annotation) and issubclass(param.annotation, kind):
            return param.name, None
    return name, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind)


def _with_claim(endpoint: Endpoint, *, required: bool) -> Endpoint:
    """The endpoint, preceded by the claim; it also asks FastAPI for the caller and header."""
    if inspect.isgeneratorfunction(endpoint) or inspect.isasyncgenfunction(endpoint):
        raise TypeError("idempotent routes cannot stream: there is no single response to store")
    signature = inspect.signature(endpoint, eval_str=True)
    clash = {_REQUEST, _RESPONSE, _CALLER, _KEY} & set(signature.parameters)
    if clash:
        raise TypeError(f"endpoint {endpoint.__name__} uses reserved parameter names {clash}")
    request_name, request_param = _shared_or_added(signature, Request, _REQUEST)
    response_name, response_param = _shared_or_added(signature, Response, _RESPONSE)
    added = [p for p in (request_param, response_param) if p is not None]
    ours = {p.name for p in added} | {_CALLER, _KEY}
    added += [
        inspect.Parameter(_CALLER, inspect.Parameter.KEYWORD_ONLY, annotation=CallerDep),
        inspect.Parameter(
            _KEY,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            # Optional here even when required: a missing key is our 400, not a 422.
            annotation=Annotated[str | None, Header(alias=HEADER, description=KEY_DESCRIPTION)],
        ),
    ]
    params = list(signature.parameters.values())
    var_keyword = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    positional = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    is_async = inspect.iscoroutinefunction(endpoint)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request: Request = kwargs[request_name]
        response: Response = kwargs[response_name]
        replay = await _claim(request, kwargs[_CALLER], kwargs[_KEY], required)
        if replay is not None:
            # Headers the dependencies set for this request (rate limits) are current ones.
            replay.headers.raw.extend(response.headers.raw)
            return replay
        for name in ours:
            del kwargs[name]
        if is_async:
            return await endpoint(*args, **kwargs)
        return await run_in_threadpool(endpoint, *args, **kwargs)

    # No __wrapped__: FastAPI must read this signature, not unwrap to the original.
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attribute, getattr(endpoint, attribute, None))
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*positional, *added, *var_keyword]
    )
    return wrapper


async def _finish(record_id: str, response: Response) -> None:
    """Store what the client got, or free the key when there is nothing worth replaying."""
    body = getattr(response, "body", None)
    try:
        if response.status_code >= 500 or not isinstance(body, bytes):
            # A server error may pass, and a stream cannot be stored: let a retry run again.
            await run_in_threadpool(_run, idempotency.release, record_id)
            return
        headers = dict(response.headers.items())
        await run_in_threadpool(
            _run,
            idempotency.complete,
            record_id,
            status_code=response.status_code,
            body=body,
            headers=headers,
        )
    except Exception:
        # The operation happened; failing its response now would invite a duplicate.
        log.exception("could not record the response for idempotency record %s", record_id)


async def _release_after_error(request: Request) -> None:
    record_id = getattr(request.state, STATE_ATTRIBUTE, None)
    if record_id is None:
        return
    # Shielded: a cancelled request must still free its key.
    with anyio.CancelScope(shield=True):
        try:
            await run_in_threadpool(_run, idempotency.release, record_id)
        except Exception:
            log.exception("could not release idempotency record %s", record_id)


class IdempotentRoute(APIRoute):
    """A route class: its POST routes honour an optional Idempotency-Key header."""

    required: ClassVar[bool] = False

    def __init__(self, path: str, endpoint: Endpoint, **kwargs: Any) -> None:
        methods = {method.upper() for method in kwargs.get("methods") or ("GET",)}
        self.idempotent = bool(methods & IDEMPOTENT_METHODS)
        if self.idempotent:
            endpoint = _with_claim(endpoint, required=self.required)
            kwargs["responses"] = {**RESPONSES, **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.idempotent:
            return handler

        async def handle(request: Request) -> Response:
            if HEADER.lower() in request.headers:
                # Read and cache the body now: a form parser would consume the stream first.
                await request.body()
            try:
                response = await handler(request)
            except BaseException:
                await _release_after_error(request)
                raise
            record_id = getattr(request.state, STATE_ATTRIBUTE, None)
            if record_id is not None:
                await _finish(record_id, response)
            return response

        return handle


class IdempotencyRequiredRoute(IdempotentRoute):
    """As IdempotentRoute, but a POST without an Idempotency-Key is refused with 400."""

    required: ClassVar[bool] = True
