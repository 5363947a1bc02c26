"""MIME messages from stored emails: text and HTML alternatives, attachments, headers.

email.policy.SMTP folds long headers, writes CRLF, and refuses a header value with a raw
line break: a second line of defence behind the API's own checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from conveyor.workloads.email.addresses import Address


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Draft:
    sender: Address
    to: list[Address]
    cc: list[Address]
    subject: str
    text: str
    message_id: str
    html: str | None = None
    reply_to: Address | None = None
    headers: dict[str, str] | None = None
    attachments: tuple[Attachment, ...] = ()


def _header(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name, addr_spec=address.email)


def build_message(draft: Draft) -> EmailMessage:
    """The message as it goes on the wire; Bcc recipients are only in the envelope."""
    message = EmailMessage(policy=SMTP)
    message["From"] = _header(draft.sender)
    if draft.to:
        message["To"] = [_header(item) for item in draft.to]
    if draft.cc:
        message["Cc"] = [_header(item) for item in draft.cc]
    if draft.reply_to is not None:
        message["Reply-To"] = _header(draft.reply_to)
    message["Subject"] = draft.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = draft.message_id
    for name, value in (draft.headers or {}).items():
        message[name] = value
    message.set_content(draft.text)
    if draft.html:
        message.add_alternative(draft.html, subtype="html")
    for item in draft.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=item.filename,
        )
    return message
