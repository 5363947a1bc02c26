"""Standard Webhooks signatures (https://www.standardwebhooks.com).

The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256, keyed by the
base64-decoded part of a `whsec_...` secret, and sends `v1,<base64 signature>` in the
`webhook-signature` header. Any Standard Webhooks library verifies what `sign` produces,
and `verify` here accepts what they produce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from datetime import datetime

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
SECRET_BYTES = 32
DEFAULT_TOLERANCE_SECONDS = 300
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh webhook from the holder of the secret."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            # Some issuers drop the padding; b64decode ignores any surplus.
            key = base64.b64decode(encoded + "==", validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret is not whsec_ followed by base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _seconds(timestamp: int | float | datetime) -> int:
    if isinstance(timestamp, datetime):
        return int(timestamp.timestamp())
    return int(timestamp)


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def _digest(key: bytes, msg_id: str, seconds: int, body: bytes) -> bytes:
    message = f"{msg_id}.{seconds}.".encode() + body
    return hmac.new(key, message, hashlib.sha256).digest()


def sign(
    secret: str | bytes, msg_id: str, timestamp: int | float | datetime, body: bytes | str
) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256>`."""
    digest = _digest(_key(secret), msg_id, _seconds(timestamp), _bytes(body))
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secret: str | bytes, msg_id: str, body: bytes | str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one send of `body`."""
    seconds = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(seconds),
        HEADER_SIGNATURE: sign(secret, msg_id, seconds, body),
    }


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises WebhookVerificationError unless it is genuine.

    `body` must be the raw request body, byte for byte: parsing and re-serializing JSON
    changes it. The timestamp must be within `tolerance` seconds of now (either way),
    which bounds replays of a captured request.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    stamp = lowered.get(HEADER_TIMESTAMP)
    signatures = lowered.get(HEADER_SIGNATURE)
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError(
            f"missing {HEADER_ID}, {HEADER_TIMESTAMP} or {HEADER_SIGNATURE} header"
        )
    try:
        seconds = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if seconds < current - tolerance:
        raise WebhookVerificationError("webhook timestamp is too old")
    if seconds > current + tolerance:
        raise WebhookVerificationError("webhook timestamp is in the future")
    expected = _digest(_key(secret), msg_id, seconds, _bytes(body))
    # Several signatures may be sent (while a secret is rotated); one match is enough.
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            received = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, received):
            return
    raise WebhookVerificationError("no matching signature")
