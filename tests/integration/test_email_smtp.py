"""SmtpConnection against a real SMTP server on loopback (aiosmtpd); no worker needed."""

from __future__ import annotations

import socket
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


@pytest.fixture
def server() -> Iterator[tuple[SinkHandler, int]]:
    handler = SinkHandler()
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
