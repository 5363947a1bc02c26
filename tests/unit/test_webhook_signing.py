"""Signatures agree with the Standard Webhooks reference library, both ways."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from conveyor.webhooks.signing import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

BODY = b'{"type":"job.succeeded","timestamp":"2026-11-25T10:00:00Z","data":{"id":"j1"}}'
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def test_generated_secret_is_whsec_base64_of_32_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret


def test_matches_the_specification_example() -> None:
    # The example from the Standard Webhooks specification and its reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_reference_library_verifies_ours() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, MSG_ID, BODY)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers)["data"] == {"id": "j1"}


def test_we_verify_the_reference_library() -> None:
    secret = generate_secret()
    now = datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(MSG_ID, now, BODY.decode())
    headers = {
        "Webhook-Id": MSG_ID,  # header names are case-insensitive
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": signature,
    }
    verify(secret, headers, BODY)
    assert signature == sign(secret, MSG_ID, now, BODY)


def test_any_of_several_signatures_may_match() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signature_headers(old, MSG_ID, BODY)
    headers["webhook-signature"] = (
        f"v1a,bm90IHN1cHBvcnRlZA== {headers['webhook-signature']} "
        f"{sign(new, MSG_ID, int(headers['webhook-timestamp']), BODY)}"
    )
    verify(new, headers, BODY)
    verify(old, headers, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"j1", b"j2")),
        lambda h, b: ({**h, "webhook-id": "msg_other"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: ({**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
    ids=["body", "id", "timestamp", "signature", "missing-header"],
)
def test_tampering_is_rejected(tamper: object) -> None:
    secret = generate_secret()
    headers, body = tamper(signature_headers(secret, MSG_ID, BODY), BODY)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body, headers)


def test_wrong_secret_is_rejected() -> None:
    headers = signature_headers(generate_secret(), MSG_ID, BODY)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(generate_secret(), headers, BODY)


def test_stale_and_future_timestamps_are_rejected() -> None:
    secret = generate_secret()
    now = int(time.time())
    stale = signature_headers(secret, MSG_ID, BODY, timestamp=now - 301)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(secret, stale, BODY)
    future = signature_headers(secret, MSG_ID, BODY, timestamp=now + 301)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(secret, future, BODY)
    verify(secret, stale, BODY, tolerance=600)
    # The reference library applies the same five-minute window.
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY, stale)
