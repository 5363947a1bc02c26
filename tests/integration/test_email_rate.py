"""Rate limits of the email workload under load: 1,000 recipients, provider 100/s, two worker
processes, one recipient domain held to 20/s at the same time.

One recipient in 13 is at that domain: at the provider's pace they come at about 7.7/s, so
its limit must hold without stretching the batch. (At 10/s the domain would need 77% of the
10 s with its messages perfectly spread, and its collisions alone would push the batch past
11 s: a test of the scheduling order, not of the limits.)

PostgreSQL only: the run takes at least 10 s by design (ten one-second windows, two of five
seconds), and the limits live in Redis, not in the database, so a second run on SQLite would
show nothing new.
"""

from __future__ import annotations

import itertools
import time

import pytest
import redis
from sqlalchemy import select

from conveyor.core import db
from conveyor.core.models import Job
from tests.integration.conftest import Stack, wait_for
from tests.integration.email_smtp import MailServer, mail, mail_server

__all__ = ["mail", "mail_server"]  # fixtures

pytestmark = pytest.mark.integration

TOTAL = 1000
PROVIDER_RATE = 100
SLOW_DOMAIN = "slow.example.org"
SLOW_RATE = 20


def max_in_window(stamps: list[float], window: float = 1.0) -> int:
    """The most events in any `window`-second interval."""
    stamps = sorted(stamps)
    best = start = 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.one_database
def test_batch_of_1000_holds_provider_and_domain_limits_across_two_processes(
    stack: Stack, mail: MailServer
) -> None:
    missed = _send_batch(stack, mail)
    if missed is not None:
        # A floor missed once may be the host (a VM's CPU taken by its neighbours); missed
        # twice, it is Conveyor. The ceilings were checked in full both times.
        mail.handler.reset()
        again = _send_batch(stack, mail)
        assert again is None, f"too slow twice: {missed}; then {again}"


def _send_batch(stack: Stack, mail: MailServer) -> str | None:
    """One run of the batch: asserts the ceilings; returns why the floor was missed."""
    client = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    for key in client.scan_iter("conveyor:rate:email:*"):
        client.delete(key)
    mail.restart_worker(
        CONVEYOR_EMAIL_RATE_PER_SECOND=str(PROVIDER_RATE),
        CONVEYOR_EMAIL_DOMAIN_RATE_PER_SECOND="60",
        CONVEYOR_EMAIL_DOMAIN_RATES=f"{SLOW_DOMAIN}={SLOW_RATE}",
    )
    # The server runs in this process: 1,000 file writes would only compete with the senders.
    mailbox, mail.handler.mailbox = mail.handler.mailbox, None
    try:
        recipients = [
            {
                "to": f"r{i}@{SLOW_DOMAIN if i % 13 == 0 else f'd{i % 4}.example.com'}",
            }
            for i in range(TOTAL)
        ]
        with stack.client(stack.key_for("email-bulk")) as api:
            response = api.post(
                "/api/v1/emails/batch",
                # Short plain-text mail: the test's SMTP server (aiosmtpd, in this process)
                # reads DATA line by line, and must keep up with 100/s with room to spare.
                json={"subject": "News", "text": "Hello!", "recipients": recipients},
            )
            accepted_at = time.time()
            assert response.status_code == 202, response.text
            batch = response.json()
            wait_for(
                lambda: len(mail.handler.received) >= TOTAL, 60, f"{TOTAL} messages", interval=0.5
            )
            stack.wait_job(batch["job_id"], {"succeeded"}, timeout=30)
            summary = api.get(f"/api/v1/emails/batch/{batch['id']}").json()["summary"]
    finally:
        mail.handler.mailbox = mailbox
        mail.restart_worker()
    assert summary["sent"] == TOTAL
    stamps = sorted(item.at for item in mail.handler.received)
    assert len(stamps) == TOTAL
    # The sending itself, first delivery to last: what the provider limit governs. Getting
    # the first chunk to a worker is the queue's business, checked on its own below.
    duration = stamps[-1] - stamps[0]
    minimum = (TOTAL - 1) / PROVIDER_RATE
    per_second = [0] * (int(stamps[-1] - stamps[0]) + 1)
    for stamp in stamps:
        per_second[int(stamp - stamps[0])] += 1
    timeline = f"first after {stamps[0] - accepted_at:.2f}s, per second: {per_second}"
    print(f"{TOTAL} messages in {duration:.2f}s; {timeline}")  # shown when a check fails
    # Less 30 ms: the first arrival may come late by the jitter described below.
    assert minimum - 0.03 <= duration, f"{TOTAL} messages took {duration:.2f}s; {timeline}"
    # Arrivals are the booked slots plus each send's own time (milliseconds, more when the
    # CPU is busy): windows allow 30 ms of that jitter, and over 5 s it is the rate itself.
    jitter_slots = round(0.03 * PROVIDER_RATE)
    assert max_in_window(stamps) <= PROVIDER_RATE + 1 + jitter_slots, timeline
    assert max_in_window(stamps, 5.0) <= 5 * PROVIDER_RATE + 1 + jitter_slots, timeline
    slow = sorted(
        item.at for item in mail.handler.received if item.recipients[0].endswith(SLOW_DOMAIN)
    )
    assert len(slow) == len([r for r in recipients if r["to"].endswith(SLOW_DOMAIN)])
    assert max_in_window(slow) <= SLOW_RATE + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(slow)]
    # Evenly spaced at 1/20 s, give or take the time a send takes.
    assert min(gaps) >= 0.5 / SLOW_RATE, f"two {SLOW_DOMAIN} sends {min(gaps):.3f}s apart"
    # The floor: the limits waste no more than 10% of the provider's rate.
    if duration > 1.1 * minimum or stamps[0] - accepted_at >= 3:
        return f"{TOTAL} messages took {duration:.2f}s; {timeline}"
    return None


@pytest.mark.one_database
def test_emails_waiting_long_for_their_domain_are_handed_back_and_keep_its_pace(
    stack: Stack, mail: MailServer
) -> None:
    crawl = "crawl.example.net"
    client = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    for key in client.scan_iter("conveyor:rate:email:*"):
        client.delete(key)
    mail.restart_worker(CONVEYOR_EMAIL_DOMAIN_RATES=f"{crawl}=1")
    log_start = stack.worker.log_path.stat().st_size
    try:
        recipients = [{"to": f"r{i}@{crawl if i % 2 else 'quick.example.com'}"} for i in range(8)]
        with stack.client(stack.key_for("email-bulk")) as api:
            response = api.post(
                "/api/v1/emails/batch",
                json={"subject": "News", "text": "Hello!", "recipients": recipients},
            )
            assert response.status_code == 202, response.text
            batch = response.json()
            wait_for(lambda: len(mail.handler.received) >= 8, 30, "8 messages", interval=0.2)
            stack.wait_job(batch["job_id"], {"succeeded"}, timeout=30)
        log = stack.worker.log_path.read_text(errors="replace")[log_start:]
    finally:
        mail.restart_worker()
    slow = sorted(item.at for item in mail.handler.received if item.recipients[0].endswith(crawl))
    assert len(slow) == 4
    assert min(later - earlier for earlier, later in itertools.pairwise(slow)) >= 0.9
    with db.session_scope() as session:
        [chunk] = session.scalars(select(Job).where(Job.parent_id == batch["job_id"])).all()
        assert (chunk.state, chunk.attempts) == ("succeeded", 1)
    # Each wait of a second was spent off the worker process: the chunk came back each time.
    assert log.count(f"email.send[{chunk.id}] received") >= 4
