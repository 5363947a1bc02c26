"""Idempotency keys for creating requests: the same key and request get the same response.

The database is the arbiter. `begin` INSERTs an in-flight record under (owner, key); the
unique constraint lets exactly one concurrent request win, on any number of API processes.
A loser reads the winner's record instead: still in flight (409), done with the same
request (replay the stored response) or done with another request (422). The winner runs
the handler and then calls `complete` with the response, or `release` if it failed, so the
client can try again.

Request hash: SHA-256 over

    METHOD "\\n" path ["?" query] "\\n" "json" "\\n" canonical JSON body
                              or "\\n" "raw"  "\\n" body bytes (not JSON, or empty)

where canonical JSON is the parsed body dumped with sorted keys and no spaces, so key order
and whitespace do not make two equal requests differ.

Every function here commits the session it is given: the record must be visible to other
processes at once. Pass a session with nothing else pending.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.core.models import IdempotencyRecord

MAX_KEY_LENGTH = 255
MAX_PATH_LENGTH = 500
IN_FLIGHT = "in_flight"
DONE = "done"
# An in-flight record this old belongs to a request whose process died (no API request
# runs for minutes): the key is free again instead of answering 409 until it expires.
DEFAULT_ABANDONED_AFTER = 300.0
# Insert attempts before giving up on a key that keeps being released and re-claimed.
MAX_CLAIM_ATTEMPTS = 5
# Marks a stored body kept as base64 (not UTF-8); no HTTP header can start with ':'.
BODY_ENCODING_FIELD = ":body-encoding"
# Headers that describe one transfer, not the response, and are never replayed.
UNSTORED_HEADERS = frozenset(
    {"content-length", "date", "server", "set-cookie", "transfer-encoding", "connection"}
)
# Per-request state (rate limits): a replay carries the current values, not the first ones.
UNSTORED_PREFIXES = ("x-ratelimit-", "ratelimit", "retry-after")


class InvalidKey(ValueError):
    """The Idempotency-Key is empty, too long or not printable ASCII."""


class Outcome(StrEnum):
    PROCEED = "proceed"  # this request holds the key: run it, then complete() or release()
    REPLAY = "replay"  # answered before for the same request: send `response` again
    IN_FLIGHT = "in_flight"  # the first request with this key is still running: 409
    MISMATCH = "mismatch"  # the key was used for a different request: 422


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    record_id: str | None = None  # with PROCEED: the record to complete or release
    response: StoredResponse | None = None  # with REPLAY
    method: str | None = None  # with MISMATCH: what the key was first used for
    path: str | None = None


def validate_key(key: str) -> str:
    if not key:
        raise InvalidKey("Idempotency-Key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters")
    if not all(" " <= char <= "~" for char in key):
        raise InvalidKey("Idempotency-Key must be printable ASCII (a UUID is a good choice)")
    return key


def canonical_body(body: bytes) -> tuple[str, bytes]:
    """("json", canonical form) for a JSON body, ("raw", the bytes) for anything else."""
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly nested
            pass
        else:
            text = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            return "json", text.encode()
    return "raw", body


def request_hash(method: str, target: str, body: bytes) -> str:
    """The fingerprint a key is bound to; `target` is the path with its query string."""
    kind, payload = canonical_body(body)
    digest = hashlib.sha256()
    digest.update(f"{method.upper()}\n{target}\n{kind}\n".encode())
    digest.update(payload)
    return digest.hexdigest()


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _encode_body(body: bytes, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    try:
        return body.decode("utf-8"), headers
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), {**headers, BODY_ENCODING_FIELD: "base64"}


def _stored_response(
    status_code: int | None, text: str | None, headers: dict[str, Any] | None
) -> StoredResponse:
    stored = {str(k): str(v) for k, v in (headers or {}).items()}
    encoding = stored.pop(BODY_ENCODING_FIELD, None)
    raw = (text or "").encode("utf-8")
    if encoding == "base64":
        try:
            raw = base64.b64decode(raw, validate=True)
        except binascii.Error:
            raw = b""
    return StoredResponse(status_code=int(status_code or 200), body=raw, headers=stored)


def begin(
    session: Session,
    *,
    owner: str,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    ttl_seconds: float,
    abandoned_after: float = DEFAULT_ABANDONED_AFTER,
    now: datetime | None = None,
) -> Claim:
    """Claim `key` for this request, or say what happened to the request that holds it."""
    validate_key(key)
    for _ in range(MAX_CLAIM_ATTEMPTS):
        moment = now or datetime.now(UTC)
        record_id = uuid.uuid4().hex
        try:
            # The INSERT comes first in its transaction: the unique index decides, not a read.
            session.execute(
                insert(IdempotencyRecord).values(
                    id=record_id,
                    owner=owner,
                    key=key,
                    method=method.upper(),
                    path=path[:MAX_PATH_LENGTH],
                    request_hash=fingerprint,
                    status=IN_FLIGHT,
                    created_at=moment,
                    expires_at=moment + timedelta(seconds=ttl_seconds),
                )
            )
            session.commit()
            return Claim(Outcome.PROCEED, record_id=record_id)
        except IntegrityError:
            session.rollback()

        row = session.execute(
            select(
                IdempotencyRecord.id,
                IdempotencyRecord.method,
                IdempotencyRecord.path,
                IdempotencyRecord.request_hash,
                IdempotencyRecord.status,
                IdempotencyRecord.response_status,
                IdempotencyRecord.response_body,
                IdempotencyRecord.response_headers,
                IdempotencyRecord.created_at,
                IdempotencyRecord.expires_at,
            ).where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
        ).one_or_none()
        session.rollback()  # end the read; the next statement may be a write
        if row is None:
            continue  # released between our INSERT and this read: try again
        cutoff = moment - timedelta(seconds=abandoned_after)
        expired = _as_utc(row.expires_at) <= moment
        abandoned = row.status == IN_FLIGHT and _as_utc(row.created_at) <= cutoff
        if expired or abandoned:
            # Conditional: a record completed meanwhile is not dead and stays.
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.id == row.id,
                    (IdempotencyRecord.expires_at <= moment)
                    | (
                        (IdempotencyRecord.status == IN_FLIGHT)
                        & (IdempotencyRecord.created_at <= cutoff)
                    ),
                )
            )
            session.commit()
            continue
        if row.request_hash != fingerprint:
            return Claim(Outcome.MISMATCH, method=row.method, path=row.path)
        if row.status == IN_FLIGHT:
            return Claim(Outcome.IN_FLIGHT)
        response = _stored_response(row.response_status, row.response_body, row.response_headers)
        return Claim(Outcome.REPLAY, response=response)
    # Claimed and released over and over: tell the client to come back, as for in-flight.
    return Claim(Outcome.IN_FLIGHT)


def complete(
    session: Session,
    record_id: str,
    *,
    status_code: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> bool:
    """Store the response for replays; False if the record is no longer ours."""
    kept = {
        name.lower(): value
        for name, value in (headers or {}).items()
        if name.lower() not in UNSTORED_HEADERS and not name.lower().startswith(UNSTORED_PREFIXES)
    }
    text, kept = _encode_body(body, kept)
    result = session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id, IdempotencyRecord.status == IN_FLIGHT)
        .values(
            status=DONE,
            response_status=status_code,
            response_body=text,
            response_headers=kept,
        )
    )
    session.commit()
    return int(getattr(result, "rowcount", 0)) == 1


def release(session: Session, record_id: str) -> bool:
    """Forget an in-flight record (the request failed), so the key can be used again."""
    result = session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.id == record_id, IdempotencyRecord.status == IN_FLIGHT
        )
    )
    session.commit()
    return int(getattr(result, "rowcount", 0)) == 1


def purge_expired(session: Session, batch_size: int, *, now: datetime | None = None) -> int:
    """Delete expired records, `batch_size` per statement (committing each); the count."""
    from conveyor.core.cleanup import delete_in_batches

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    moment = now or datetime.now(UTC)
    condition = IdempotencyRecord.expires_at <= moment
    return delete_in_batches(session, IdempotencyRecord.id, condition, batch_size=batch_size)
