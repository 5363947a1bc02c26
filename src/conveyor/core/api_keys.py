"""API keys: random, shown once, stored as a SHA-256 hash, compared in constant time.

Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing to guess
that a slow password hash would protect.

An owner is an identity, not a name: a new key gets an owner of its own (`own_<random>`,
its name is only a label), and joins an existing owner only when that owner is named
explicitly. Admin and non-admin keys never share an owner, since keys of one owner see the
same jobs and replay the same idempotent responses.
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


OWNER_PREFIX = "own"
# The bootstrap key's owner, as before owners were generated: existing data keeps working.
BOOTSTRAP_OWNER = "admin"
MAX_OWNER_CHARS = 120


class OwnerConflict(ValueError):
    """A key that would join an owner across the admin line; names the owner."""

    def __init__(self, owner: str, message: str) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True)
class NewKey:
    record: ApiKey
    plaintext: str
    # True when the key joined an owner that already had keys.
    existing_owner: bool = False


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


def new_owner_id() -> str:
    return f"{OWNER_PREFIX}_{secrets.token_hex(8)}"


def owner_admin_flags(session: Session, owner: str) -> set[bool]:
    """The admin flags of the owner's keys, revoked ones included: empty if it has none."""
    flags = session.scalars(select(ApiKey.is_admin).where(ApiKey.owner == owner).distinct())
    return {bool(flag) for flag in flags}


def check_owner(session: Session, owner: str, *, admin: bool) -> bool:
    """True if `owner` exists and may take this key, False if it is new; raises
    OwnerConflict when the key would cross the admin line."""
    flags = owner_admin_flags(session, owner)
    if admin and False in flags:
        raise OwnerConflict(
            owner, f"owner {owner!r} has non-admin keys; an admin key may not join it"
        )
    if not admin and True in flags:
        raise OwnerConflict(
            owner, f"owner {owner!r} has admin keys; a non-admin key may not share it"
        )
    return bool(flags)


def create_key(
    session: Session,
    name: str,
    *,
    owner: str | None = None,
    admin: bool = False,
    plaintext: str | None = None,
) -> NewKey:
    """A key with a new owner of its own, or, when `owner` is given, a key of that owner
    (new or existing; OwnerConflict if it would cross the admin line)."""
    if owner is not None:
        owner = owner.strip()
        if not owner or len(owner) > MAX_OWNER_CHARS:
            raise ValueError(f"an owner must be 1 to {MAX_OWNER_CHARS} characters")
        existing = check_owner(session, owner, admin=admin)
    else:
        owner, existing = new_owner_id(), False
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
        owner=owner,
        prefix=prefix,
        key_hash=hash_key(plaintext),
        is_admin=admin,
        created_at=utcnow(),
    )
    session.add(record)
    session.flush()
    return NewKey(record=record, plaintext=plaintext, existing_owner=existing)


def ensure_key(session: Session, plaintext: str, *, name: str = "bootstrap") -> bool:
    """Create this admin key unless it exists; True if it was created."""
    prefix = split_key(plaintext)
    if prefix is not None:
        existing = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if existing is not None:
            if not hmac.compare_digest(existing.key_hash, hash_key(plaintext)):
                raise ValueError("a different key with the same prefix already exists")
            return False
    owner = BOOTSTRAP_OWNER
    if False in owner_admin_flags(session, owner):
        # Old data where a non-admin key took this owner's name: never join it.
        owner = new_owner_id()
    create_key(session, name, owner=owner, admin=True, plaintext=plaintext)
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
