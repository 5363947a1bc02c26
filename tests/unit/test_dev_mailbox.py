"""The dev mailbox as each key sees it: an owner its own mail by Message-ID, an admin all."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from conveyor.local.mail_sink import Mailbox
from conveyor.workloads.email import dev_mailbox
from conveyor.workloads.email.addresses import Address
from conveyor.workloads.email.message import Draft, build_message
from conveyor.workloads.email.models import Email


def _send(mailbox: Mailbox, session: Session, owner: str | None, subject: str) -> str:
    """A message in the mailbox; with an owner, also the email row it was sent from."""
    message_id = f"<{uuid.uuid4().hex}@mail.example.com>"
    draft = Draft(
        sender=Address("noreply@example.com"),
        to=[Address("ada@example.com")],
        cc=[],
        subject=subject,
        text="Body",
        message_id=message_id,
    )
    if owner is not None:
        session.add(
            Email(
                id=uuid.uuid4().hex,
                owner=owner,
                message_id=message_id,
                sender="noreply@example.com",
                subject=subject,
                text="Body",
            )
        )
        session.commit()
    return mailbox.save("noreply@example.com", ["ada@example.com"], build_message(draft).as_bytes())


def test_owners_see_and_delete_only_their_own_mail(tmp_path: Path, session: Session) -> None:
    mailbox = Mailbox(tmp_path / "box")
    alice = [_send(mailbox, session, "alice", f"alice {n}") for n in range(3)]
    bob = _send(mailbox, session, "bob", "bob")
    system = _send(mailbox, session, None, "no email row")

    listed = dev_mailbox.listing(mailbox, session, "alice", limit=10)
    assert [item["subject"] for item in listed] == ["alice 2", "alice 1", "alice 0"]
    assert [item["id"] for item in dev_mailbox.listing(mailbox, session, "alice", 2)] == [
        alice[2],
        alice[1],
    ]
    assert dev_mailbox.detail(mailbox, session, "alice", alice[0]) is not None
    assert dev_mailbox.detail(mailbox, session, "alice", bob) is None
    assert dev_mailbox.detail(mailbox, session, "alice", system) is None
    assert dev_mailbox.detail(mailbox, session, None, system) is not None
    assert len(dev_mailbox.listing(mailbox, session, None, limit=10)) == 5

    assert dev_mailbox.clear(mailbox, session, "alice") == 3
    assert mailbox.ids() == sorted([bob, system])
    assert dev_mailbox.clear(mailbox, session, None) == 2
    assert mailbox.ids() == []


def test_the_message_id_is_read_from_the_headers_and_bad_ids_are_refused(
    tmp_path: Path, session: Session
) -> None:
    mailbox = Mailbox(tmp_path / "box")
    saved = _send(mailbox, session, "alice", "hi")
    header = mailbox.message_id_header(saved)
    assert header is not None
    assert header.startswith("<")
    assert header.endswith("@mail.example.com>")
    assert mailbox.message_id_header("../../etc/passwd") is None
    assert mailbox.delete(["../../etc/passwd", saved, saved]) == 1
