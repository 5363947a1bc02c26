"""Sending stored emails: suppression, rate limits, SMTP, and the sent-record.

The order is what makes a redelivered task harmless: an email whose row says `sent` is
skipped; after the server's 250 the row is set to `sent` in its own committed statement
before anything else happens. The window left is between the server's 250 and that
commit (a worker killed exactly then sends the message again on redelivery); the stable
Message-ID lets receivers drop such a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Any, cast

from sqlalchemy import Connection, Executable, Table, select, update

from conveyor.core.db import autocommit, get_engine, session_scope
from conveyor.core.errors import PermanentError, TransientError
from conveyor.core.ledger import as_utc
from conveyor.core.models import utcnow
from conveyor.core.storage import NotFound, Storage
from conveyor.workloads.email import suppressions
from conveyor.workloads.email.addresses import Address
from conveyor.workloads.email.limits import DOMAIN_PREFIX, Pacer
from conveyor.workloads.email.message import Attachment, Draft, build_message
from conveyor.workloads.email.models import (
    FINAL_STATUSES,
    Email,
    EmailStatus,
    StoredFile,
)
from conveyor.workloads.email.smtp import (
    Accepted,
    PermanentSmtpError,
    SmtpConnection,
    SmtpError,
)

log = logging.getLogger(__name__)

EMAILS = cast(Table, Email.__table__)


class OutOfTime(TransientError):
    """A chunk used its time budget: it retries and continues with the emails left."""


# Every email left waiting this long for its domain: hand them back rather than hold a
# worker process that could be sending another chunk meanwhile. Not for shorter waits: the
# handed-back emails queue behind the chunks already waiting for a process, and under
# load they were handed back again and again and all sent at the end, at the domain's pace.
DEFER_AFTER = 0.5


class Deferred(Exception):
    """The emails left can only go later: their recipient domains are at their limits."""

    def __init__(self, email_ids: list[str], delay: float) -> None:
        super().__init__(f"{len(email_ids)} emails wait {delay:.2f}s for their domains")
        self.email_ids = email_ids
        self.delay = delay


@dataclass
class Tally:
    sent: int = 0
    bounced: int = 0
    suppressed: int = 0
    skipped: int = 0  # already final (a redelivery) or not due yet

    def as_dict(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "bounced": self.bounced,
            "suppressed": self.suppressed,
            "skipped": self.skipped,
        }


@dataclass
class Sender:
    """Sends a list of stored emails in order, as the limits allow.

    `on_sent(email)` runs after the sent-record is committed; `on_bounce(email, error)`
    after a bounce is recorded, for bulk sends that go on with the other emails (without
    it, the PermanentSmtpError is raised to the caller).
    """

    connection: SmtpConnection
    pacer: Pacer
    storage: Storage
    on_sent: Callable[[Email], None] = lambda email: None
    on_bounce: Callable[[Email, PermanentSmtpError], None] | None = None
    progress: Callable[[int, int], None] | None = None
    # False (bulk): bounced, suppressed or failed emails stay so on a redelivery.
    # True: only `sent` is final, so a replayed dead letter tries a bounced email again.
    resend_final: bool = True
    # True: raise Deferred when every email left waits for its domain (see DEFER_AFTER).
    defer: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    tally: Tally = field(default_factory=Tally)
    _db: Connection | None = field(default=None, init=False, repr=False)

    def run(self, email_ids: list[str], *, deadline: float) -> Tally:
        try:
            return self._run(email_ids, deadline=deadline)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _write(self, statement: Executable) -> None:
        """Run one statement in its own commit, on a connection kept for the whole run:
        checking one out per email would cost a round trip (the pool's ping) each time."""
        if self._db is None:
            self._db = get_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
        self._db.execute(statement)

    def _run(self, email_ids: list[str], *, deadline: float) -> Tally:
        emails = self._load(email_ids)
        blocked = self._suppressed(emails)
        pending = deque(email for email in emails if self._due(email))
        not_before: dict[str, float] = {}
        done = 0
        total = len(pending)
        while pending:
            email = pending[0]
            now = self.clock()
            if now >= deadline:
                raise OutOfTime(f"time budget used with {len(pending)} of {total} emails left")
            ready_at = not_before.get(email.id, 0.0)
            if ready_at > now:
                # Every email left waits for its domain: sleep until the soonest one.
                soonest = min(not_before.get(item.id, 0.0) for item in pending)
                if soonest - now >= DEFER_AFTER and self.defer:
                    raise Deferred([item.id for item in pending], soonest - now)
                if soonest > now:
                    self.sleep(min(soonest, deadline) - now)
                    continue
                pending.rotate(-1)
                continue
            envelope = self._envelope(email, blocked)
            if not envelope:
                pending.popleft()
                self._mark_suppressed(email)
                done += 1
                continue
            domains = Counter(address.domain for address in envelope)
            slot = self.pacer.take(email.owner, domains, len(envelope))
            if (slot.refused_by or "").startswith(DOMAIN_PREFIX):
                not_before[email.id] = now + max(slot.retry_after, 0.001)
                pending.rotate(-1)
                continue
            if not (slot.allowed or slot.reserved):
                # The provider or owner limit is booked far ahead: ask again later.
                self.sleep(max(0.0, min(max(slot.retry_after, 0.01), deadline - now)))
                continue
            # Built while the booked slot comes closer: the wait hides the work.
            data = self._build(email)
            if slot.reserved:
                self.sleep(max(0.0, min(now + slot.retry_after, deadline) - self.clock()))
            pending.popleft()
            self._send(email, data, envelope, blocked)
            done += 1
            if self.progress is not None and (done % 25 == 0 or not pending):
                self.progress(done, total)
        return self.tally

    # --- loading --------------------------------------------------------------------

    def _load(self, email_ids: list[str]) -> list[Email]:
        with session_scope() as session:
            rows = {
                row.id: row for row in session.scalars(select(Email).where(Email.id.in_(email_ids)))
            }
        emails = []
        for email_id in email_ids:
            row = rows.get(email_id)
            if row is None:
                log.warning("email %s is gone; nothing to send", email_id)
                self.tally.skipped += 1
            elif row.status == EmailStatus.SENT or (
                not self.resend_final and row.status in FINAL_STATUSES
            ):
                self.tally.skipped += 1  # a redelivery of a message already handled
            else:
                emails.append(row)
        return emails

    def _due(self, email: Email) -> bool:
        send_at = as_utc(email.send_at)
        if email.status == EmailStatus.SCHEDULED and send_at and send_at > utcnow():
            self.tally.skipped += 1
            return False
        return True

    def _suppressed(self, emails: list[Email]) -> dict[str, set[str]]:
        by_owner: dict[str, list[str]] = {}
        for email in emails:
            by_owner.setdefault(email.owner, []).extend(
                item["email"] for item in [*email.to, *email.cc, *email.bcc]
            )
        with session_scope() as session:
            return {
                owner: suppressions.suppressed(session, owner, addresses)
                for owner, addresses in by_owner.items()
            }

    @staticmethod
    def _envelope(email: Email, blocked: dict[str, set[str]]) -> list[Address]:
        owner_blocked = blocked.get(email.owner, set())
        everyone = [Address.from_json(item) for item in [*email.to, *email.cc, *email.bcc]]
        return [item for item in everyone if item.email.lower() not in owner_blocked]

    # --- sending --------------------------------------------------------------------

    def _attachments(self, email: Email) -> tuple[Attachment, ...]:
        if not email.attachments:
            return ()
        ids = [item["file_id"] for item in email.attachments]
        with session_scope() as session:
            files = {
                row.id: row
                for row in session.scalars(select(StoredFile).where(StoredFile.id.in_(ids)))
            }
        out = []
        for item in email.attachments:
            stored = files.get(item["file_id"])
            try:
                if stored is None:
                    raise NotFound(item["file_id"])
                data = self.storage.get(stored.storage_key)
            except NotFound:
                raise PermanentError(
                    f"attachment {item['file_id']} ({item.get('filename')}) no longer exists"
                ) from None
            out.append(Attachment(item["filename"], item["content_type"], data))
        return tuple(out)

    def _build(self, email: Email) -> bytes:
        draft = Draft(
            sender=Address.from_json(_address_json(email.sender)),
            to=[Address.from_json(item) for item in email.to],
            cc=[Address.from_json(item) for item in email.cc],
            reply_to=Address.from_json(_address_json(email.reply_to)) if email.reply_to else None,
            subject=email.subject,
            text=email.text,
            html=email.html,
            message_id=email.message_id,
            headers=dict(email.headers or {}),
            attachments=self._attachments(email),
        )
        return build_message(draft).as_bytes()

    def _send(
        self, email: Email, data: bytes, envelope: list[Address], blocked: dict[str, set[str]]
    ) -> None:
        sender = parseaddr(email.sender)[1]
        try:
            accepted = self.connection.send(sender, [a.email for a in envelope], data)
        except PermanentSmtpError as exc:
            self._mark_bounced(email, exc, blocked)
            if self.on_bounce is None:
                raise
            self.on_bounce(email, exc)
            return
        except SmtpError as exc:
            self._note_error(email, str(exc))
            raise
        skipped = [item.to_json() for item in _skipped(email, envelope)]
        self._mark_sent(email, accepted, skipped, blocked)
        self.on_sent(email)

    # --- recording ------------------------------------------------------------------

    def _mark_sent(
        self,
        email: Email,
        accepted: Accepted,
        skipped: list[dict[str, str]],
        blocked: dict[str, set[str]],
    ) -> None:
        refused = [
            {"address": item.address, "code": item.code, "reply": item.reply}
            for item in accepted.refused
        ]
        self._write(
            update(EMAILS)
            .where(EMAILS.c.id == email.id, EMAILS.c.status != EmailStatus.SENT)
            .values(
                status=EmailStatus.SENT,
                sent_at=utcnow(),
                smtp_code=accepted.code,
                smtp_reply=accepted.reply[:2000],
                refused=refused,
                skipped=skipped,
                error=None,
                attempts=EMAILS.c.attempts + 1,
                updated_at=utcnow(),
            )
        )
        self.tally.sent += 1
        hard = [item for item in accepted.refused if item.permanent]
        if hard:
            # Sent to the others; those the server refused for good are suppressed.
            self._suppress(email, [(item.address, item.code, item.reply) for item in hard])
            blocked.setdefault(email.owner, set()).update(item.address.lower() for item in hard)

    def _mark_bounced(
        self, email: Email, exc: PermanentSmtpError, blocked: dict[str, set[str]]
    ) -> None:
        self._finish(email, EmailStatus.BOUNCED, code=exc.code, reply=exc.reply, error=str(exc))
        self.tally.bounced += 1
        if exc.stage == "rcpt":
            # Rejected recipients, not rejected content: only those addresses are suppressed.
            refused = [(item.address, item.code, item.reply) for item in exc.refused]
            self._suppress(email, refused)
            blocked.setdefault(email.owner, set()).update(item[0].lower() for item in refused)

    def _mark_suppressed(self, email: Email) -> None:
        everyone = [*email.to, *email.cc, *email.bcc]
        self._write(
            update(EMAILS)
            .where(EMAILS.c.id == email.id, EMAILS.c.status != EmailStatus.SENT)
            .values(status=EmailStatus.SUPPRESSED, skipped=everyone, updated_at=utcnow())
        )
        self.tally.suppressed += 1

    def _finish(
        self, email: Email, status: str, *, code: int | None, reply: str, error: str
    ) -> None:
        self._write(
            update(EMAILS)
            .where(EMAILS.c.id == email.id, EMAILS.c.status != EmailStatus.SENT)
            .values(
                status=status,
                smtp_code=code,
                smtp_reply=reply[:2000],
                error=error[:2000],
                attempts=EMAILS.c.attempts + 1,
                updated_at=utcnow(),
            )
        )

    def _note_error(self, email: Email, error: str) -> None:
        self._write(
            update(EMAILS)
            .where(EMAILS.c.id == email.id, EMAILS.c.status != EmailStatus.SENT)
            .values(error=error[:2000], attempts=EMAILS.c.attempts + 1, updated_at=utcnow())
        )

    def _suppress(self, email: Email, refused: Sequence[tuple[str, int | None, str]]) -> None:
        with session_scope() as session:
            for address, code, reply in refused:
                suppressions.add(
                    session,
                    email.owner,
                    address,
                    reason="bounce",
                    smtp_code=code,
                    smtp_reply=reply,
                    email_id=email.id,
                )


def _address_json(value: str | None) -> dict[str, Any]:
    """Sender and Reply-To are stored as 'Name <a@b>' strings already validated."""
    name, address = parseaddr(value or "")
    return {"email": address, "name": name}


def _skipped(email: Email, envelope: list[Address]) -> list[Address]:
    kept = {item.email.lower() for item in envelope}
    everyone = [Address.from_json(item) for item in [*email.to, *email.cc, *email.bcc]]
    return [item for item in everyone if item.email.lower() not in kept]


def mark_failed(email_ids: list[str], error: str) -> int:
    """Emails of a job that ran out of retries: failed, unless already final."""
    with autocommit() as connection:
        result = connection.execute(
            update(EMAILS)
            .where(EMAILS.c.id.in_(email_ids), EMAILS.c.status.not_in(list(FINAL_STATUSES)))
            .values(status=EmailStatus.FAILED, error=error[:2000], updated_at=utcnow())
        )
    return int(getattr(result, "rowcount", 0))


def is_due(send_at: datetime | None) -> bool:
    stamp = as_utc(send_at)
    return stamp is None or stamp <= utcnow()
