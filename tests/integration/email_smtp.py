"""The SMTP server of the email tests: the mail sink's handler on loopback, in this process,
with failure modes (421/451/550 at DATA on demand, 550 at RCPT for unknown users)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor.local.mail_sink import Mailbox, SinkHandler, start_sink
from tests.integration.conftest import Stack, free_port, wait_for


@dataclass
class MailServer:
    handler: SinkHandler
    port: int
    stack: Stack

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.stack.env,
            "CONVEYOR_SMTP_HOST": "127.0.0.1",
            "CONVEYOR_SMTP_PORT": str(self.port),
            **extra,
        }

    def restart_worker(self, **extra: str) -> None:
        """The stack's worker again, sending here (and with `extra` settings)."""
        self.stack.worker.stop()
        base = self.stack.env
        self.stack.env = self.env(**extra)
        try:
            self.stack.start_worker()
        finally:
            self.stack.env = base

    def wait_messages(self, address: str, count: int, timeout: float = 30) -> list[Any]:
        return list(
            wait_for(
                lambda: (
                    (found := self.handler.messages_to(address)) and len(found) >= count and found
                ),
                timeout,
                f"{count} message(s) to {address}",
            )
        )


@pytest.fixture(scope="session")
def mail_server(stack: Stack) -> Iterator[MailServer]:
    handler = SinkHandler(mailbox=Mailbox(stack.tmp / "data" / "mailbox"))
    port = free_port()
    controller = start_sink(handler, "127.0.0.1", port)
    server = MailServer(handler, port, stack)
    server.restart_worker()
    try:
        yield server
    finally:
        # This fixture ends only with the stack (whose teardown is next): its worker is
        # stopped before the server, and no other worker is started for the stack's last
        # moments.
        stack.worker.stop()
        controller.stop()


@pytest.fixture
def mail(mail_server: MailServer) -> Iterator[MailServer]:
    mail_server.handler.reset()
    yield mail_server
    mail_server.handler.reset()


def settle(seconds: float = 0.5) -> None:
    """Give a message that should NOT arrive the time it would need to."""
    time.sleep(seconds)
