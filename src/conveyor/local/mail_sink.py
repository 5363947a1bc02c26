"""The local mail sink: an SMTP server that keeps every message instead of delivering it.

    python -m conveyor.local.mail_sink --port 1025 --dir .conveyor/mailbox

`conveyor up` runs it and points the worker at it; GET /api/v1/dev/mailbox lists what
arrived (like Mailpit in Laravel Sail). Messages are `.eml` files, the newest
CONVEYOR_MAIL_SINK_MAX_MESSAGES kept. The handler can also misbehave on purpose, for tests
of a sender: answer the next deliveries with 421/451/550, or refuse some recipients.
"""

from __future__ import annotations

import argparse
import email
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core.extras import MissingExtra, require

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller

_ID = re.compile(r"\d{19}-[0-9a-f]{8}")
REPLIES = {
    421: "421 4.3.2 Service not available, closing channel",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Temporary local problem, try again later",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.7.1 Message rejected",
    552: "552 5.3.4 Message size exceeds fixed limit",
    554: "554 5.6.0 Transaction failed",
}


@dataclass(frozen=True)
class Received:
    at: float
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    id: str

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Mailbox:
    """`.eml` files in a directory, newest last by name (a nanosecond timestamp)."""

    def __init__(self, directory: Path, max_messages: int = 1000) -> None:
        self.directory = directory
        self.max_messages = max_messages
        self._saved = 0

    def save(self, sender: str, recipients: list[str], data: bytes) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        message_id = f"{time.time_ns():019d}-{uuid.uuid4().hex[:8]}"
        envelope = f"X-Envelope-From: {sender}\r\nX-Envelope-To: {', '.join(recipients)}\r\n"
        temp = self.directory / f".{message_id}.partial"
        temp.write_bytes(envelope.encode() + data)
        temp.replace(self.directory / f"{message_id}.eml")
        self._saved += 1
        if self._saved % 50 == 0:
            self.prune()
        return message_id

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.stem for path in self.directory.glob("*.eml"))

    def prune(self) -> None:
        ids = self.ids()
        for stale in ids[: max(0, len(ids) - self.max_messages)]:
            (self.directory / f"{stale}.eml").unlink(missing_ok=True)

    def clear(self) -> int:
        ids = self.ids()
        for message_id in ids:
            (self.directory / f"{message_id}.eml").unlink(missing_ok=True)
        return len(ids)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete these messages; how many there were."""
        deleted = 0
        for message_id in ids:
            path = self._path(message_id)
            if path is not None and path.is_file():
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted

    def _path(self, message_id: str) -> Path | None:
        return self.directory / f"{message_id}.eml" if _ID.fullmatch(message_id) else None

    def read(self, message_id: str) -> EmailMessage | None:
        path = self._path(message_id)
        if path is None or not path.is_file():
            return None
        parsed = email.message_from_bytes(path.read_bytes(), policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def message_id_header(self, message_id: str) -> str | None:
        """The message's Message-ID header, from its headers alone (no body parsed)."""
        path = self._path(message_id)
        if path is None or not path.is_file():
            return None
        with path.open("rb") as file:
            headers = BytesHeaderParser(policy=default_policy).parse(file)
        value = headers.get("Message-ID")
        return str(value).strip() if value is not None else None

    def summary(self, message_id: str) -> dict[str, Any] | None:
        message = self.read(message_id)
        if message is None:
            return None
        return {
            "id": message_id,
            "received_at": int(message_id.split("-")[0]) / 1e9,
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "envelope_to": [
                part.strip() for part in str(message.get("X-Envelope-To", "")).split(",") if part
            ],
            "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")),
        }

    def detail(self, message_id: str) -> dict[str, Any] | None:
        message = self.read(message_id)
        summary = self.summary(message_id)
        if message is None or summary is None:
            return None
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        attachments = []
        for part in message.iter_attachments():
            payload = part.get_payload(decode=True)
            attachments.append(
                {
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "size": len(payload) if isinstance(payload, bytes) else 0,
                }
            )
        return {
            **summary,
            "headers": {key: str(value) for key, value in message.items()},
            "text": text.get_content() if text is not None else None,
            "html": html.get_content() if html is not None else None,
            "attachments": attachments,
        }


@dataclass
class SinkHandler:
    """An aiosmtpd handler: stores messages, and fails on request (for tests)."""

    mailbox: Mailbox | None = None
    # Reply codes for the next deliveries, one per message, answered at DATA.
    fail_next: list[int] = field(default_factory=list)
    # Recipients refused at RCPT with a 550 "user unknown".
    unknown_users: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    # Tests read `received`; the long-running sink keeps messages on disk only.
    keep_received: bool = True
    # Advertise PIPELINING (RFC 2920), as hosted providers do; off tests the plain path.
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the hook takes over what aiosmtpd would do
        if self.pipelining:
            # Commands are read one line at a time, so pipelined ones simply queue up.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.lower() in self.unknown_users:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrived = time.time()  # before the disk write, which would only add noise
        with self.lock:
            code = self.fail_next.pop(0) if self.fail_next else None
        if code is not None:
            return REPLIES.get(code, f"{code} Failing on request")
        data = bytes(envelope.original_content or envelope.content or b"")
        sender = str(envelope.mail_from)
        recipients = [str(item) for item in envelope.rcpt_tos]
        message_id = (
            self.mailbox.save(sender, recipients, data)
            if self.mailbox is not None
            else uuid.uuid4().hex
        )
        if self.keep_received:
            with self.lock:
                self.received.append(Received(arrived, sender, tuple(recipients), data, message_id))
        return f"250 2.0.0 OK: queued as {message_id}"

    def fail(self, *codes: int) -> None:
        with self.lock:
            self.fail_next.extend(codes)

    def messages_to(self, address: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if address in item.recipients]

    def reset(self) -> None:
        with self.lock:
            self.fail_next.clear()
            self.unknown_users.clear()
            self.received.clear()


def require_aiosmtpd() -> None:
    """The SMTP server the sink runs on comes with the email extra; the mailbox needs none."""
    require("aiosmtpd", extra="email", what="the local mail sink (CONVEYOR_SMTP_HOST unset)")


def start_sink(handler: SinkHandler, host: str, port: int) -> Controller:
    require_aiosmtpd()
    from aiosmtpd.controller import Controller

    # A fixed greeting name: otherwise every connection waits for a reverse DNS lookup.
    controller = Controller(
        handler, hostname=host, port=port, server_hostname="conveyor-mail-sink", ready_timeout=10
    )
    controller.start()
    return controller


def main(argv: list[str] | None = None) -> None:
    from conveyor.core.settings import get_settings, section
    from conveyor.workloads.email.settings import EmailSettings

    email = section(EmailSettings)
    parser = argparse.ArgumentParser(description="A local SMTP server that keeps every message.")
    parser.add_argument("--host", default=email.smtp_host)
    parser.add_argument("--port", type=int, default=email.smtp_port)
    parser.add_argument("--dir", type=Path, default=get_settings().data_dir / "mailbox")
    parser.add_argument("--max-messages", type=int, default=email.mail_sink_max_messages)
    args = parser.parse_args(argv)
    handler = SinkHandler(mailbox=Mailbox(args.dir, args.max_messages), keep_received=False)
    try:
        controller = start_sink(handler, args.host, args.port)
    except MissingExtra as exc:
        raise SystemExit(f"conveyor: {exc}") from None
    except OSError as exc:
        # 1025 is also Mailpit's and MailHog's port: say which setting moves ours.
        raise SystemExit(
            f"conveyor: the mail sink cannot listen on {args.host}:{args.port} "
            f"({exc.strerror or exc}); set CONVEYOR_SMTP_PORT to a free port, or "
            "CONVEYOR_SMTP_HOST to use the server that listens there"
        ) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"mail sink on {args.host}:{args.port}, messages in {args.dir}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
