"""SMTP sending over one kept-open connection per process, with failures classified.

Opening a connection (TCP, greeting, EHLO, STARTTLS, AUTH) costs several round trips; a
worker process keeps one open across messages instead, checks it with NOOP when it has been
idle, and opens a new one when the server dropped it. Replies are classified the SMTP way:
4xx and lost connections may pass (TemporarySmtpError, retried with backoff), 5xx will not
(PermanentSmtpError, a dead letter; a 5xx at RCPT also suppresses the address).
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.core.errors import PermanentError, TransientError
from conveyor.core.settings import section
from conveyor.workloads.email.settings import EmailSettings


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    implicit_tls: bool = False
    timeout: float = 30.0
    noop_after: float = 5.0

    @classmethod
    def from_settings(cls, settings: EmailSettings | None = None) -> SmtpConfig:
        settings = settings or section(EmailSettings)
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_use_tls,
            implicit_tls=settings.smtp_use_ssl,
            timeout=settings.smtp_timeout_seconds,
            noop_after=settings.smtp_noop_after_seconds,
        )


@dataclass(frozen=True)
class Refusal:
    address: str
    code: int
    reply: str

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


class SmtpError(Exception):
    """A send that failed: the stage (connect, mail, rcpt, data), the reply code and text."""

    def __init__(
        self, stage: str, code: int | None, reply: str, refused: tuple[Refusal, ...] = ()
    ) -> None:
        where = f" at {stage.upper()}" if stage != "connect" else " while connecting"
        status = f"{code} " if code is not None else ""
        super().__init__(f"{status}{reply}{where}".strip())
        self.stage = stage
        self.code = code
        self.reply = reply
        self.refused = refused


class TemporarySmtpError(SmtpError, TransientError):
    """4xx or a lost connection: worth another try later."""


class PermanentSmtpError(SmtpError, PermanentError):
    """5xx: the server will give the same answer again."""


def _decode(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def failure(stage: str, code: int | None, reply: bytes | str) -> SmtpError:
    kind = PermanentSmtpError if code is not None and 500 <= code < 600 else TemporarySmtpError
    return kind(stage, code, _decode(reply))


@dataclass(frozen=True)
class Accepted:
    """The server took the message (250 after DATA) for every recipient not in `refused`."""

    code: int
    reply: str
    refused: tuple[Refusal, ...] = ()


class _LostBeforeFirstReply(Exception):
    """The connection failed before the server answered MAIL: nothing was accepted."""


_LINE_END = re.compile(rb"\r\n|\n|\r")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _command(smtp: smtplib.SMTP, command: str) -> tuple[int, bytes]:
    smtp.putcmd(command)
    return smtp.getreply()


def _send_body(smtp: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """The message after a 354: CRLF line ends, leading dots doubled, then CRLF.CRLF."""
    body = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", message))
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    smtp.send(body + b".\r\n")
    return smtp.getreply()


@dataclass
class SmtpConnection:
    """One SMTP connection, opened on first use and reused; not shared between threads."""

    config: SmtpConfig
    smtp: smtplib.SMTP | None = None
    last_used: float = 0.0
    opened: int = 0  # connections opened so far (for metrics and tests)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self) -> smtplib.SMTP:
        config = self.config
        try:
            if config.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host,
                    config.port,
                    timeout=config.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            smtp.ehlo()
            if config.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if config.username:
                smtp.login(config.username, config.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentSmtpError("auth", exc.smtp_code, _decode(exc.smtp_error)) from None
        except smtplib.SMTPResponseException as exc:
            raise failure("connect", exc.smtp_code, exc.smtp_error) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporarySmtpError(
                "connect", None, f"cannot reach {config.host}:{config.port}: {exc}"
            ) from None
        self.opened += 1
        self.last_used = time.monotonic()
        return smtp

    def _usable(self) -> tuple[smtplib.SMTP, bool]:
        """The open connection (checked with NOOP if idle) or a new one; True if reused."""
        if self.smtp is not None:
            idle = time.monotonic() - self.last_used
            if idle <= self.config.noop_after:
                return self.smtp, True
            try:
                code, _ = self.smtp.noop()
                if code == 250:
                    return self.smtp, True
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        self.smtp = self._open()
        return self.smtp, False

    def send(self, sender: str, recipients: list[str], message: bytes) -> Accepted:
        with self._lock:
            smtp, reused = self._usable()
            try:
                try:
                    return self._transaction(smtp, sender, recipients, message)
                except _LostBeforeFirstReply:
                    if not reused:
                        raise TemporarySmtpError("mail", None, "connection lost") from None
                    # A kept-open connection the server closed since the NOOP: nothing was
                    # accepted yet, so one fresh connection is safe.
                    self.close()
                    self.smtp = smtp = self._open()
                    try:
                        return self._transaction(smtp, sender, recipients, message)
                    except _LostBeforeFirstReply:
                        raise TemporarySmtpError("mail", None, "connection lost") from None
            except SmtpError:
                # Whatever state the session is in now, the next message starts afresh.
                self.close()
                raise
            finally:
                self.last_used = time.monotonic()

    def _transaction(
        self, smtp: smtplib.SMTP, sender: str, recipients: list[str], message: bytes
    ) -> Accepted:
        pipelined = smtp.has_extn("pipelining")
        envelope = [f"MAIL FROM:{smtplib.quoteaddr(sender)}"]
        if pipelined:
            # RFC 2920: MAIL, every RCPT and DATA in one write, their replies read in order:
            # one round trip where each command would otherwise wait for its answer.
            envelope += [f"RCPT TO:{smtplib.quoteaddr(address)}" for address in recipients]
            envelope.append("DATA")
        try:
            smtp.send("".join(f"{command}\r\n" for command in envelope))
            code, reply = smtp.getreply()
        except (smtplib.SMTPException, OSError):
            raise _LostBeforeFirstReply from None
        if code != 250:
            raise failure("mail", code, reply)
        refused: list[Refusal] = []
        for address in recipients:
            if pipelined:
                rcpt_code, rcpt_reply = self._guard(smtp.getreply, stage="rcpt")
            else:
                rcpt_code, rcpt_reply = self._guard(smtp.rcpt, address, stage="rcpt")
            if rcpt_code not in (250, 251):
                refused.append(Refusal(address, rcpt_code, _decode(rcpt_reply)))
        if pipelined:
            data_code, data_reply = self._guard(smtp.getreply, stage="data")
        if len(refused) == len(recipients):
            first = refused[0]
            kind = (
                PermanentSmtpError
                if all(item.permanent for item in refused)
                else TemporarySmtpError
            )
            # A pipelined DATA may have been answered 354 all the same: the connection is
            # closed without a body, so the server delivers nothing.
            raise kind("rcpt", first.code, first.reply, tuple(refused))
        if not pipelined:
            data_code, data_reply = self._guard(_command, smtp, "DATA", stage="data")
        if data_code != 354:
            raise failure("data", data_code, data_reply)
        data_code, data_reply = self._guard(_send_body, smtp, message, stage="data")
        if data_code != 250:
            raise failure("data", data_code, data_reply)
        return Accepted(data_code, _decode(data_reply), tuple(refused))

    def _guard(
        self, call: Callable[..., tuple[int, bytes]], *args: object, stage: str
    ) -> tuple[int, bytes]:
        try:
            result = call(*args)
        except smtplib.SMTPResponseException as exc:
            raise failure(stage, exc.smtp_code, exc.smtp_error) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporarySmtpError(stage, None, f"connection lost: {exc}") from None
        return result

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


# --- the per-process connection ---------------------------------------------------------

_connection: SmtpConnection | None = None
_owner_pid = 0


def process_connection(config: SmtpConfig | None = None) -> SmtpConnection:
    """This process's connection; a forked child never reuses its parent's socket."""
    global _connection, _owner_pid
    config = config or SmtpConfig.from_settings()
    if _connection is None or _owner_pid != os.getpid() or _connection.config != config:
        if _connection is not None and _owner_pid == os.getpid():
            _connection.close()
        _connection = SmtpConnection(config)
        _owner_pid = os.getpid()
    return _connection


def forget_connection() -> None:
    """After fork: drop the parent's connection object without touching its socket."""
    global _connection
    _connection = None


def close_connection() -> None:
    """On worker shutdown: say QUIT politely."""
    global _connection
    if _connection is not None and _owner_pid == os.getpid():
        _connection.close()
    _connection = None
