"""Request dependencies: a database session per request and the caller's API key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from conveyor.api.key_cache import CheckedKey, checked_keys
from conveyor.api.rate_limit import (
    admit_known_key,
    check_auth_block,
    limit_api_key,
    record_auth_failure,
)
from conveyor.core import api_keys
from conveyor.core.db import session_scope
from conveyor.core.ledger import as_utc
from conveyor.core.models import utcnow
from conveyor.core.settings import get_settings

bearer = HTTPBearer(auto_error=False, description="An API key from `conveyor keys create`.")
# Writing last_used_at on every request would turn reads into writes; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# Function scope: the session commits when the route returns, before the answer is sent, so
# a client that has its 2xx sees the change in its next request.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    """Who is asking: an API key, or a user of an app that mounts Conveyor with its own auth."""

    owner: str
    is_admin: bool = False
    # What rate limits and stream caps are counted by; an app's user is counted by owner.
    key_id: str = ""
    # API keys belong to developers and services; an app's signed-in users may be anyone.
    via_api_key: bool = False

    @property
    def sees_tracebacks(self) -> bool:
        """A traceback shows server paths and code: for admins and API keys, not app users."""
        return self.is_admin or self.via_api_key

    def __post_init__(self) -> None:
        if not self.key_id:
            object.__setattr__(self, "key_id", f"owner:{self.owner}")

    @property
    def scope(self) -> str | None:
        """The owner to filter by; None for admins, who see everything."""
        return None if self.is_admin else self.owner


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def get_caller(
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    # An app that mounts Conveyor with its own authentication has identified the caller.
    identified = getattr(request.state, "caller", None)
    if isinstance(identified, Caller):
        return identified
    if credentials is None:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    address = request.client.host if request.client else "unknown"
    key = _cached_key(credentials.credentials)
    if key is not None:
        # The block and the key's limit in one round trip; nothing was looked up.
        admit_known_key(address, key.id, response)
    else:
        # Before the key is looked at: a blocked address learns nothing from its guesses.
        check_auth_block(address)
        key = _checked_key(credentials.credentials)
        if key is None:
            record_auth_failure(address)
            raise _unauthorized("invalid or revoked API key")
        # Before any work for the request; 429 with Retry-After when over the key's limit.
        limit_api_key(key.id, response)
    caller = Caller(key_id=key.id, owner=key.owner, is_admin=key.is_admin, via_api_key=True)
    request.state.caller = caller
    return caller


def _cached_key(plaintext: str) -> CheckedKey | None:
    """The key, when this process checked it moments ago and its last use needs no write."""
    key = checked_keys.get(plaintext, get_settings().api_key_cache_seconds)
    if key is None:
        return None
    last_used = as_utc(key.last_used_at)
    if last_used is None or utcnow() - last_used > LAST_USED_RESOLUTION:
        return None
    return key


def _checked_key(plaintext: str) -> CheckedKey | None:
    """The key, from this process's cache when it was checked moments ago, else from the
    database (in a transaction of its own, ended before the route runs: a long request, an
    event stream, must not hold a connection); its last use is written at most once per
    LAST_USED_RESOLUTION."""
    key = _cached_key(plaintext)
    if key is not None:
        return key
    ttl = get_settings().api_key_cache_seconds
    now = utcnow()
    with session_scope() as session:
        record = api_keys.authenticate(session, plaintext)
        if record is None:
            return None
        last_used = as_utc(record.last_used_at)
        if last_used is None or now - last_used > LAST_USED_RESOLUTION:
            record.last_used_at = now
        key = CheckedKey(record.id, record.owner, record.is_admin, record.last_used_at)
    checked_keys.put(plaintext, key, ttl)
    return key


CallerDep = Annotated[Caller, Depends(get_caller)]


async def require_admin(caller: CallerDep) -> Caller:
    # async: a check this small must not cost a trip to the thread pool.
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route is for admins only")
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]
