"""The email workload end to end: API, a real worker, a real SMTP server on loopback."""

from __future__ import annotations

import email
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest

from conveyor.core.celery_app import get_celery
from conveyor.workloads.email.service import dispatch_due
from tests.integration.conftest import (
    QUICK_REDELIVERY,
    Stack,
    dead_letter_of,
    extra_api,
    wait_for,
)
from tests.integration.email_smtp import MailServer, mail, mail_server, settle

__all__ = ["mail", "mail_server"]  # fixtures

pytestmark = pytest.mark.integration

WELCOME = {"name": "Ada", "app_name": "Conveyor", "confirm_url": "https://example.com/c?t=1"}


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def post_email(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/emails", json=body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    assert set(accepted) >= {"id", "job_id", "status"}
    return accepted


def test_templated_email_arrives_with_both_parts_headers_and_attachment(
    stack: Stack, mail: MailServer
) -> None:
    owner = stack.key_for("email-alice")
    attachment = bytes(range(256)) * 40 + b"\r\n.\r\nend"  # binary, and an SMTP dot line
    with stack.client(owner) as client:
        uploaded = client.post(
            "/api/v1/files", files={"file": ("../report.bin", attachment, "application/pdf")}
        )
        assert uploaded.status_code == 201, uploaded.text
        file = uploaded.json()
        assert file["filename"] == "report.bin"
        assert file["size"] == len(attachment)
        accepted = post_email(
            client,
            to=["Ada Lovelace <ada@example.com>"],
            cc=["grace@example.org"],
            bcc=["audit@example.net"],
            template="welcome",
            context={**WELCOME, "name": "Ada <b>"},
            attachments=[{"file_id": file["id"]}],
        )
        job = stack.wait_job(accepted["job_id"], {"succeeded"})
        assert job["attempts"] == 1
        stored = client.get(f"/api/v1/emails/{accepted['id']}").json()
    [received] = mail.wait_messages("ada@example.com", 1)
    assert set(received.recipients) == {"ada@example.com", "grace@example.org", "audit@example.net"}
    message = parsed(received.data)
    assert message["Subject"] == "Welcome to Conveyor, Ada <b>!"
    assert message["From"] == "Conveyor <noreply@localhost>"  # CONVEYOR_EMAIL_FROM
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Cc"] == "grace@example.org"
    assert message["Bcc"] is None  # only in the envelope
    assert message["Message-ID"] == stored["message_id"]
    assert stored["message_id"].endswith("@conveyor.localhost>")
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "Welcome, Ada <b>!" in text.get_content()
    assert "https://example.com/c?t=1" in text.get_content()
    assert "Welcome, Ada &lt;b&gt;!" in html.get_content()  # autoescaped
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "report.bin"
    assert part.get_content_type() == "application/pdf"
    assert part.get_payload(decode=True) == attachment
    assert stored["status"] == "sent"
    assert stored["smtp_code"] == 250
    # Another owner sees neither the email nor the file.
    with stack.client(stack.key_for("email-mallory")) as other:
        assert other.get(f"/api/v1/emails/{accepted['id']}").status_code == 404
        assert other.get(f"/api/v1/files/{file['id']}").status_code == 404
        reuse = other.post(
            "/api/v1/emails",
            json={"to": ["x@example.com"], "subject": "s", "text": "t",
                  "attachments": [{"file_id": file["id"]}]},
        )  # fmt: skip
        assert reuse.status_code == 422
        assert "attachments[0].file_id" in reuse.json()["detail"]


def test_transient_failures_retry_then_deliver_exactly_once(stack: Stack, mail: MailServer) -> None:
    mail.handler.fail(451, 421)
    with stack.client(stack.key_for("email-alice")) as client:
        accepted = post_email(client, to=["flaky@example.com"], subject="Hi", text="Body")
        job = stack.wait_job(accepted["job_id"], {"succeeded", "dead"}, timeout=60)
        stored = client.get(f"/api/v1/emails/{accepted['id']}").json()
    assert job["state"] == "succeeded"
    assert job["attempts"] == 3
    assert stored["status"] == "sent"
    assert stored["attempts"] == 3
    settle()
    assert len(mail.handler.messages_to("flaky@example.com")) == 1


def test_unknown_user_bounces_to_dead_letter_suppresses_and_replays_after_unsuppress(
    stack: Stack, mail: MailServer, admin: httpx.Client
) -> None:
    address = "nobody@example.com"
    mail.handler.unknown_users.add(address)
    with stack.client(stack.key_for("email-alice")) as client:
        first = post_email(client, to=[address], subject="Hello", text="Are you there?")
        letter = dead_letter_of(stack, admin, first["job_id"])
        assert letter["reason"] == "permanent_error"
        assert letter["attempts"] == 1  # a 5xx is not retried
        assert "550" in letter["error"]["message"]
        assert "User unknown" in letter["error"]["message"]
        bounced = client.get(f"/api/v1/emails/{first['id']}").json()
        assert bounced["status"] == "bounced"
        assert bounced["smtp_code"] == 550
        listed = client.get("/api/v1/email-suppressions", params={"email": address}).json()
        [entry] = listed["items"]
        assert entry["reason"] == "bounce"
        assert entry["smtp_code"] == 550
        # Later sends to the address are skipped, not sent.
        second = post_email(client, to=[address], subject="Again", text="Still?")
        stack.wait_job(second["job_id"], {"succeeded"})
        assert client.get(f"/api/v1/emails/{second['id']}").json()["status"] == "suppressed"
        # The mailbox exists again: un-suppress, replay the dead letter, it arrives once.
        mail.handler.unknown_users.clear()
        assert client.delete(f"/api/v1/email-suppressions/{entry['id']}").status_code == 204
        replay = admin.post(f"/api/v1/dead-letters/{letter['id']}/replay")
        assert replay.status_code == 202, replay.text
        stack.wait_job(replay.json()["job_id"], {"succeeded"})
        assert client.get(f"/api/v1/emails/{first['id']}").json()["status"] == "sent"
    [received] = mail.wait_messages(address, 1)
    assert parsed(received.data)["Subject"] == "Hello"
    settle()
    assert len(mail.handler.messages_to(address)) == 1


def test_one_refused_recipient_does_not_stop_the_others(stack: Stack, mail: MailServer) -> None:
    mail.handler.unknown_users.add("gone@example.com")
    with stack.client(stack.key_for("email-bob")) as client:
        accepted = post_email(
            client, to=["here@example.com", "gone@example.com"], subject="Team", text="News"
        )
        stack.wait_job(accepted["job_id"], {"succeeded"})
        stored = client.get(f"/api/v1/emails/{accepted['id']}").json()
        suppressed = client.get("/api/v1/email-suppressions").json()["items"]
    assert stored["status"] == "sent"
    assert [item["address"] for item in stored["refused"]] == ["gone@example.com"]
    assert stored["refused"][0]["code"] == 550
    assert [item["email"] for item in suppressed] == ["gone@example.com"]
    [received] = mail.wait_messages("here@example.com", 1)
    assert received.recipients == ("here@example.com",)


@pytest.mark.one_database
def test_worker_killed_after_the_server_accepted_sends_one_copy(
    stack: Stack, mail: MailServer
) -> None:
    address = "kill-after-send@example.com"
    with stack.client(stack.key_for("email-alice")) as client:
        accepted = post_email(client, to=[address], subject="Once", text="Only once")
        mail.wait_messages(address, 1)
        # The test task module's email_sent receiver SIGKILLs the worker's process group.
        assert stack.worker.process is not None
        wait_for(lambda: stack.worker.process.poll() is not None, 20, "the worker to die")  # type: ignore[union-attr]
        mail.restart_worker(**QUICK_REDELIVERY)
        try:
            job = stack.wait_job(accepted["job_id"], {"succeeded"}, timeout=90)
        finally:
            mail.restart_worker()
        stored = client.get(f"/api/v1/emails/{accepted['id']}").json()
    assert job["attempts"] == 2  # delivered again after the kill
    assert job["result"]["skipped"] == 1  # ... and found the sent-record
    assert stored["status"] == "sent"
    assert stored["attempts"] == 1
    settle(1.0)
    assert len(mail.handler.messages_to(address)) == 1


def test_bad_input_is_a_422_naming_the_field(stack: Stack, mail: MailServer) -> None:
    base = {"to": ["ok@example.com"], "subject": "Hi", "text": "Body"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**base, "to": ["not-an-address"]}, "to[0]"),
        ({**base, "cc": ["ok@example.com", "a@@example.com"]}, "cc[1]"),
        ({**base, "subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
        ({**base, "to": ["Eve\r\nBcc: victim@example.com <eve@example.com>"]}, "to[0]"),
        ({**base, "from": "Eve\n <eve@example.com>"}, "from"),
        ({"to": ["ok@example.com"], "template": "no-such-template"}, "template"),
        ({"to": ["ok@example.com"], "template": "welcome", "context": {"name": "A"}},
         "context.app_name"),
        ({"to": ["ok@example.com"], "template": "welcome",
          "context": {**WELCOME, "app_name": "X\r\nBcc: v@example.com"}}, "subject"),
        ({**base, "to": [f"r{i}@example.com" for i in range(51)]}, "to"),
        ({**base, "subject": None}, "subject"),
        ({"to": ["ok@example.com"], "subject": "Hi"}, "text"),
        ({**base, "attachments": [{"file_id": "missing"}]}, "attachments[0].file_id"),
        ({**base, "send_at": "2030-01-01T09:00:00"}, "send_at"),
        ({**base, "to": []}, "to"),
    ]  # fmt: skip
    with stack.client(stack.key_for("email-alice")) as client:
        for body, field in cases:
            response = client.post("/api/v1/emails", json=body)
            assert response.status_code == 422, (body, response.text)
            assert field in response.json()["detail"], (field, response.text)
        too_many = {
            "template": "welcome",
            "context": WELCOME,
            "recipients": [{"to": f"r{i}@example.com"} for i in range(10_001)],
        }
        response = client.post("/api/v1/emails/batch", json=too_many)
        assert response.status_code == 422
        assert "recipients" in response.json()["detail"]
        assert "10000" in response.json()["detail"]
        bad_recipient = {
            "template": "welcome",
            "context": {"app_name": "C", "confirm_url": "https://example.com"},
            "recipients": [
                {"to": "a@example.com", "context": {"name": "A"}},
                {"to": "b@example.com"},
            ],
        }
        response = client.post("/api/v1/emails/batch", json=bad_recipient)
        assert response.status_code == 422
        assert "recipients[1].context.name" in response.json()["detail"]
    settle()
    assert mail.handler.received == []  # nothing reached a worker


def test_batch_progress_summary_per_recipient_status_and_list_unsubscribe(
    stack: Stack, mail: MailServer, admin: httpx.Client
) -> None:
    owner = stack.key_for("email-carol")
    mail.handler.unknown_users.add("r7@example.org")
    recipients = [
        {"to": f"r{i}@example.org", "context": {"name": f"Reader {i}"}} for i in range(250)
    ]
    with stack.client(owner) as client:
        assert (
            client.post("/api/v1/email-suppressions", json={"email": "R3@example.org"}).status_code
            == 201
        )
        response = client.post(
            "/api/v1/emails/batch",
            json={
                "template": "welcome",
                "context": {"app_name": "Conveyor", "confirm_url": "https://example.com/c"},
                "recipients": recipients,
                "unsubscribe_url": "https://example.com/unsub?e={email}",
            },
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["total"] == 250
        assert batch["chunks"] == 3
        parent = stack.wait_job(batch["job_id"], {"succeeded", "failed"}, timeout=60)
        assert parent["state"] == "succeeded"
        assert parent["progress"]["current"] == parent["progress"]["total"] == 3
        body = client.get(
            f"/api/v1/emails/batch/{batch['id']}", params={"status": "bounced"}
        ).json()
        others = stack.client(stack.key_for("email-mallory"))
        assert others.get(f"/api/v1/emails/batch/{batch['id']}").status_code == 404
        others.close()
    assert body["status"] == "completed"
    assert body["progress"] == {"current": 250, "total": 250}
    assert body["summary"] == {
        "total": 250, "sent": 248, "failed": 1, "bounced": 1, "suppressed": 1, "pending": 0,
    }  # fmt: skip
    [bounced] = body["recipients"]
    assert bounced["to"] == "r7@example.org"
    assert bounced["smtp_code"] == 550
    letters = admin.get("/api/v1/dead-letters", params={"limit": 200}).json()["items"]
    assert any(item["kwargs"] == {"email_ids": [bounced["id"]]} for item in letters)
    [received] = mail.wait_messages("r42@example.org", 1)
    message = parsed(received.data)
    assert message["Subject"] == "Welcome to Conveyor, Reader 42!"
    assert message["List-Unsubscribe"] == "<https://example.com/unsub?e=r42%40example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.handler.messages_to("r3@example.org") == []
    assert len(mail.handler.received) == 248


def test_template_preview_and_registry(stack: Stack, admin: httpx.Client) -> None:
    preview = admin.get("/api/v1/email-templates/welcome/preview")
    assert preview.status_code == 200
    body = preview.json()
    assert body["subject"] == "Welcome to Conveyor, Ada!"
    assert "<h1>Welcome, Ada!</h1>" in body["html"]
    assert "Confirm my email (https://example.com/confirm?token=abc123)" in body["text"]
    assert "You receive this email" in body["html"]  # the layout's footer partial
    names = [item["name"] for item in admin.get("/api/v1/email-templates").json()["items"]]
    assert {"welcome", "password-reset"} <= set(names)
    assert admin.get("/api/v1/email-templates/nope/preview").status_code == 404


def test_dev_mailbox_lists_captured_messages_only_when_the_sink_is_on(
    stack: Stack, mail: MailServer
) -> None:
    key = stack.key_for("email-dave")
    with stack.client(key) as client:
        accepted = post_email(
            client, to=["dev@example.com"], template="password-reset",
            context={"name": "Dev", "app_name": "Conveyor", "minutes": 30,
                     "reset_url": "https://example.com/r"},
        )  # fmt: skip
        stack.wait_job(accepted["job_id"], {"succeeded"})
        assert client.get("/api/v1/dev/mailbox").status_code == 404  # sink off
    with extra_api(stack, "mailbox-api", CONVEYOR_MAIL_SINK="true") as base_url:
        headers = {"Authorization": f"Bearer {key}"}
        listed = httpx.get(f"{base_url}/api/v1/dev/mailbox", headers=headers).json()["items"]
        mine = [item for item in listed if item["envelope_to"] == ["dev@example.com"]]
        assert len(mine) == 1
        assert mine[0]["subject"] == "Reset your Conveyor password"
        detail = httpx.get(f"{base_url}/api/v1/dev/mailbox/{mine[0]['id']}", headers=headers).json()
    assert "within 30 minutes: https://example.com/r" in detail["text"]
    assert "Choose a new password" in detail["html"]


def test_dev_mailbox_shows_and_deletes_only_the_owners_own_mail(
    stack: Stack, mail: MailServer
) -> None:
    alice, bob = stack.key_for("mailbox-alice"), stack.key_for("mailbox-bob")
    for name, key in (("alice", alice), ("bob", bob)):
        with stack.client(key) as client:
            accepted = post_email(
                client, to=[f"{name}-inbox@example.com"], subject=f"for {name}", text="Hi"
            )
            stack.wait_job(accepted["job_id"], {"succeeded"})
    with extra_api(stack, "mailbox-owners", CONVEYOR_MAIL_SINK="true") as base_url:

        def as_(key: str) -> httpx.Client:
            return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"})

        with as_(alice) as a, as_(bob) as b, as_(stack.admin_key) as root:

            def subjects(client: httpx.Client) -> list[str]:
                items = client.get("/api/v1/dev/mailbox", params={"limit": 500}).json()["items"]
                return [item["subject"] for item in items]

            assert subjects(a) == ["for alice"]
            assert subjects(b) == ["for bob"]
            assert {"for alice", "for bob"} <= set(subjects(root))
            [bobs] = b.get("/api/v1/dev/mailbox").json()["items"]
            assert a.get(f"/api/v1/dev/mailbox/{bobs['id']}").status_code == 404
            assert b.get(f"/api/v1/dev/mailbox/{bobs['id']}").json()["text"].rstrip() == "Hi"
            assert root.get(f"/api/v1/dev/mailbox/{bobs['id']}").status_code == 200

            # Another owner's key deletes its own mail, not everyone's.
            assert a.delete("/api/v1/dev/mailbox").json() == {"deleted": 1}
            assert subjects(a) == []
            assert subjects(b) == ["for bob"]
            assert "for bob" in subjects(root)


def test_far_future_send_is_scheduled_and_published_when_due(
    stack: Stack, mail: MailServer
) -> None:
    key = stack.key_for("email-erin")
    with extra_api(stack, "schedule-api", CONVEYOR_EMAIL_SCHEDULE_COUNTDOWN_MAX="0") as base_url:
        send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        response = httpx.post(
            f"{base_url}/api/v1/emails",
            json={"to": ["later@example.com"], "subject": "Later", "text": "x", "send_at": send_at},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "scheduled"
    assert dispatch_due(get_celery(), horizon=0) == 0  # not due yet
    settle(1.0)
    assert mail.handler.messages_to("later@example.com") == []
    time.sleep(1.5)
    assert dispatch_due(get_celery(), horizon=0) == 1
    stack.wait_job(accepted["job_id"], {"succeeded"})
    [received] = mail.wait_messages("later@example.com", 1)
    assert received.at >= datetime.fromisoformat(send_at).timestamp()
