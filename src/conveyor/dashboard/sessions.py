"""Dashboard sign-ins: an API key exchanged for a server-side session behind a cookie.

The cookie holds a random token; Redis holds, under the token's SHA-256, who signed in and
the session's CSRF token. Signing out deletes the entry, so a copied cookie dies with it,
and every request re-reads the key, so a revoked key ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from conveyor.core.models import ApiKey
from conveyor.core.redis_client import DASHBOARD_SESSION_PREFIX, get_redis
from conveyor.core.settings import get_settings

COOKIE = "conveyor_dashboard"
# Before sign-in there is no session to hold a CSRF token: the login form pairs its hidden
# field with this cookie instead (double submit).
LOGIN_COOKIE = "conveyor_dashboard_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class SignedIn:
    key_id: str
    key_name: str
    owner: str
    is_admin: bool
    csrf: str


def _key(token: str) -> str:
    return DASHBOARD_SESSION_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def lifetime_seconds() -> int:
    return max(60, round(get_settings().dashboard_session_hours * 3600))


def start(record: ApiKey) -> tuple[str, SignedIn]:
    """A new session for the key; the token goes in the cookie, never anywhere else."""
    token = secrets.token_urlsafe(32)
    signed_in = SignedIn(
        key_id=record.id,
        key_name=record.name,
        owner=record.owner,
        is_admin=record.is_admin,
        csrf=secrets.token_urlsafe(32),
    )
    get_redis().set(_key(token), json.dumps(asdict(signed_in)), ex=lifetime_seconds())
    return token, signed_in


def load(session: Session, token: str | None) -> SignedIn | None:
    """The session behind a cookie, while it lasts and its key is not revoked."""
    if not token or len(token) > 200:
        return None
    raw = get_redis().get(_key(token))
    if raw is None:
        return None
    signed_in = SignedIn(**json.loads(raw))
    record = session.get(ApiKey, signed_in.key_id)
    if record is None or record.revoked_at is not None:
        end(token)
        return None
    # Rights follow the key as it is now, not as it was at sign-in.
    if record.is_admin != signed_in.is_admin:
        signed_in = SignedIn(**{**asdict(signed_in), "is_admin": record.is_admin})
    return signed_in


def end(token: str | None) -> None:
    if token:
        get_redis().delete(_key(token))


def same_token(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
