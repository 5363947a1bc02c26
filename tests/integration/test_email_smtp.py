"""SmtpConnection against a real SMTP server on loopback (aiosmtpd); no worker needed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from conveyor.local.mail_sink import SinkHandler, start_sink
from conveyor.workloads.email.smtp import (
    PermanentSmtpError,
    SmtpConfig,
    SmtpConnection,
    TemporarySmtpError,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
MESSAGE = b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[SinkHandler, int]]:
    handler = SinkHandler(pipelining=request.param)
    port = free_port()
    controller = start_sink(handler, "127.0.0.1", port)
    yield handler, port
    controller.stop()


def test_one_connection_carries_many_messages(server: tuple[SinkHandler, int]) -> None:
    handler, port = server
    connection = SmtpConnection(SmtpConfig("127.0.0.1", port))
    for index in range(5):
        accepted = connection.send("s@example.com", [f"r{index}@example.com"], MESSAGE)
        assert accepted.code == 250
    assert connection.opened == 1
    assert len(handler.received) == 5
    assert connection.smtp is not None
    assert connection.smtp.has_extn("pipelining") == handler.pipelining
    connection.close()


def test_a_dropped_connection_is_noticed_and_reopened(server: tuple[SinkHandler, int]) -> None:
    handler, port = server
    connection = SmtpConnection(SmtpConfig("127.0.0.1", port, noop_after=0))
    connection.send("s@example.com", ["a@example.com"], MESSAGE)
    assert connection.smtp is not None
    assert connection.smtp.sock is not None
    connection.smtp.sock.shutdown(socket.SHUT_RDWR)  # dropped while idle (a NAT, a restart)
    connection.send("s@example.com", ["b@example.com"], MESSAGE)
    assert connection.opened == 2
    assert [item.recipients for item in handler.received] == [
        ("a@example.com",),
        ("b@example.com",),
    ]


def test_replies_are_classified(server: tuple[SinkHandler, int]) -> None:
    handler, port = server
    connection = SmtpConnection(SmtpConfig("127.0.0.1", port))
    handler.fail(451, 554)
    with pytest.raises(TemporarySmtpError) as temporary:
        connection.send("s@example.com", ["a@example.com"], MESSAGE)
    assert temporary.value.code == 451
    assert temporary.value.stage == "data"
    with pytest.raises(PermanentSmtpError) as permanent:
        connection.send("s@example.com", ["a@example.com"], MESSAGE)
    assert permanent.value.code == 554
    handler.unknown_users.add("gone@example.com")
    with pytest.raises(PermanentSmtpError) as refused:
        connection.send("s@example.com", ["gone@example.com"], MESSAGE)
    assert refused.value.stage == "rcpt"
    assert [item.address for item in refused.value.refused] == ["gone@example.com"]
    assert "User unknown" in str(refused.value)
    partial = connection.send("s@example.com", ["gone@example.com", "ok@example.com"], MESSAGE)
    assert [item.address for item in partial.refused] == ["gone@example.com"]
    assert handler.received[-1].recipients == ("ok@example.com",)


def test_an_unreachable_server_is_a_temporary_error() -> None:
    connection = SmtpConnection(SmtpConfig("127.0.0.1", free_port(), timeout=2))
    with pytest.raises(TemporarySmtpError, match="cannot reach"):
        connection.send("s@example.com", ["a@example.com"], MESSAGE)


class ScriptedServer:
    """An SMTP server on a socket that keeps each chunk it reads, to see what was batched."""

    def __init__(self, rcpt_replies: list[bytes]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.rcpt_replies = rcpt_replies
        self.reads: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"220 scripted\r\n")
            pending = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.reads.append(chunk)
                pending += chunk
                replies, pending = self._answer(pending)
                conn.sendall(replies)

    def _answer(self, pending: bytes) -> tuple[bytes, bytes]:
        replies = b""
        if pending.endswith(b"\r\n.\r\n"):
            return b"250 2.0.0 queued\r\n", b""
        while b"\r\n" in pending and not pending.startswith(b"Subject"):
            line, pending = pending.split(b"\r\n", 1)
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb == b"EHLO":
                replies += b"250-scripted\r\n250-PIPELINING\r\n250 HELP\r\n"
            elif verb == b"RCPT":
                replies += self.rcpt_replies.pop(0)
            elif verb == b"DATA":
                replies += b"354 go ahead\r\n"
            elif verb == b"QUIT":
                replies += b"221 bye\r\n"
            else:
                replies += b"250 OK\r\n"
        return replies, pending


def test_pipelined_envelope_is_one_write_and_replies_are_matched_in_order() -> None:
    scripted = ScriptedServer([b"250 OK\r\n", b"550 5.1.1 no such user\r\n", b"250 OK\r\n"])
    connection = SmtpConnection(SmtpConfig("127.0.0.1", scripted.port))
    recipients = ["a@example.com", "gone@example.com", "c@example.com"]
    accepted = connection.send("s@example.com", recipients, MESSAGE + b".hidden\r\n")
    assert accepted.code == 250
    assert [(item.address, item.code) for item in accepted.refused] == [("gone@example.com", 550)]
    envelope = next(read for read in scripted.reads if read.upper().startswith(b"MAIL"))
    assert envelope.upper().split(b"\r\n")[:-1] == [
        b"MAIL FROM:<S@EXAMPLE.COM>",
        b"RCPT TO:<A@EXAMPLE.COM>",
        b"RCPT TO:<GONE@EXAMPLE.COM>",
        b"RCPT TO:<C@EXAMPLE.COM>",
        b"DATA",
    ]
    # The body's leading dot is doubled, so the server does not read it as the end.
    assert b"\r\n..hidden\r\n.\r\n" in b"".join(scripted.reads)
    connection.close()
