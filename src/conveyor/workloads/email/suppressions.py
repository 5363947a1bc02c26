"""The suppression list: addresses that hard-bounced (or were added by hand) are skipped.

Entries belong to an owner: one tenant's bounces never silence another tenant's mail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.workloads.email.models import Suppression


def suppressed(session: Session, owner: str, addresses: Iterable[str]) -> set[str]:
    """Which of `addresses` (compared lower-cased) are suppressed for `owner`."""
    wanted = sorted({address.lower() for address in addresses})
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        part = wanted[start : start + 500]
        query = select(Suppression.address).where(
            Suppression.owner == owner, Suppression.address.in_(part)
        )
        found.update(session.scalars(query))
    return found


def add(
    session: Session,
    owner: str,
    address: str,
    *,
    reason: str,
    smtp_code: int | None = None,
    smtp_reply: str | None = None,
    email_id: str | None = None,
) -> Suppression:
    """Suppress `address` for `owner`; an existing entry is kept and returned."""
    address = address.lower()
    existing = find(session, owner, address)
    if existing is not None:
        return existing
    entry = Suppression(
        id=uuid.uuid4().hex,
        owner=owner,
        address=address,
        reason=reason,
        smtp_code=smtp_code,
        smtp_reply=(smtp_reply or None) and smtp_reply[:2000],
        email_id=email_id,
    )
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError:
        # Another bounce of the same address got there first.
        again = find(session, owner, address)
        assert again is not None
        return again
    return entry


def find(session: Session, owner: str, address: str) -> Suppression | None:
    query = select(Suppression).where(
        Suppression.owner == owner, Suppression.address == address.lower()
    )
    return session.scalars(query).first()


def listing(
    session: Session, owner: str | None, *, address: str | None, limit: int, offset: int
) -> list[Suppression]:
    query = select(Suppression)
    if owner is not None:
        query = query.where(Suppression.owner == owner)
    if address:
        query = query.where(Suppression.address == address.lower())
    query = query.order_by(Suppression.created_at.desc(), Suppression.id)
    return list(session.scalars(query.limit(limit).offset(offset)))
