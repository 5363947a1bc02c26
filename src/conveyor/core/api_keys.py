"""API keys: random, shown once, stored as a SHA-256 hash, compared in constant time.

Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing to guess
that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.core.models import ApiKey, utcnow

KEY_PREFIX = "cvk"
PREFIX_CHARS = 12
# A bootstrap key chosen by a person must still be hard to guess.
MIN_SECRET_CHARS = 24
KEY_FORMAT_HELP = (
    f"must look like cvk_<{PREFIX_CHARS} hex digits>_<a secret of {MIN_SECRET_CHARS}+ characters>;"
    " make one with: python3 -c \"import secrets; print('cvk_' + secrets.token_hex(6) + '_' +"
    ' secrets.token_urlsafe(32))"'
)


@dataclass(frozen=True)
class NewKey:
    record: ApiKey
    plaintext: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def split_key(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed key, or None."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != PREFIX_CHARS:
        return None
    prefix, secret = parts[1], parts[2]
    if len(secret) < MIN_SECRET_CHARS or any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix


def generate_plaintext() -> str:
    return f"{KEY_PREFIX}_{secrets.token_hex(PREFIX_CHARS // 2)}_{secrets.token_urlsafe(32)}"


def create_key(
    session: Session,
    name: str,
    *,
    owner: str | None = None,
    admin: bool = False,
    plaintext: str | None = None,
) -> NewKey:
    plaintext = plaintext or generate_plaintext()
    prefix = split_key(plaintext)
    if prefix is None:
        raise ValueError(
            f"an API key must look like {KEY_PREFIX}_<{PREFIX_CHARS} hex>_<secret of "
            f"{MIN_SECRET_CHARS}+ characters>; "
            "use `conveyor keys create` to make one"
        )
    record = ApiKey(
        id=uuid.uuid4().hex,
        name=name,
        owner=owner or name,
        prefix=prefix,
        key_hash=hash_key(plaintext),
        is_admin=admin,
        created_at=utcnow(),
    )
    session.add(record)
    session.flush()
    return NewKey(record=record, plaintext=plaintext)


def ensure_key(session: Session, plaintext: str, *, name: str = "bootstrap") -> bool:
    """Create this admin key unless it exists; True if it was created."""
    prefix = split_key(plaintext)
    if prefix is not None:
        existing = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if existing is not None:
            if not hmac.compare_digest(existing.key_hash, hash_key(plaintext)):
                raise ValueError("a different key with the same prefix already exists")
            return False
    create_key(session, name, owner="admin", admin=True, plaintext=plaintext)
    return True


def authenticate(session: Session, plaintext: str) -> ApiKey | None:
    prefix = split_key(plaintext)
    if prefix is None:
        return None
    record = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if record is None or record.revoked_at is not None:
        # Hash anyway so a missing prefix costs the same time as a wrong secret.
        hmac.compare_digest(hash_key(plaintext), "0" * 64)
        return None
    if not hmac.compare_digest(record.key_hash, hash_key(plaintext)):
        return None
    return record


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke(session: Session, key_id_or_prefix: str) -> ApiKey | None:
    record = session.get(ApiKey, key_id_or_prefix) or session.scalar(
        select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)
    )
    if record is None:
        return None
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record
