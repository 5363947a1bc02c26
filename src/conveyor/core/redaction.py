"""Masking secrets in task arguments before they are written where people read them."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

SECRET_KEY_PATTERN = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|authorization|^auth$|credential|"
    r"private[_-]?key|card|cvc|cvv|payment[_-]?method|iban|ssn|signature",
    re.IGNORECASE,
)
# Long digit runs look like card numbers even when the key name gives nothing away.
# Not inside a longer token: the digit groups that end a UUID are not a card number.
CARD_NUMBER_PATTERN = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
MAX_STRING = 2000
MAX_DEPTH = 8


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of `value` with secret-looking fields masked and long strings shortened."""
    if _depth > MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if SECRET_KEY_PATTERN.search(name):
                out[name] = REDACTED
            else:
                out[name] = redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, _depth=_depth + 1) for item in value]
    if isinstance(value, str):
        masked = CARD_NUMBER_PATTERN.sub(REDACTED, value)
        if len(masked) > MAX_STRING:
            return masked[:MAX_STRING] + f"... [{len(masked) - MAX_STRING} more characters]"
        return masked
    if isinstance(value, int) and not isinstance(value, bool) and 13 <= len(str(abs(value))) <= 19:
        return REDACTED  # a card number passed as an integer
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(repr(value), _depth=_depth + 1)


def safe_url(url: str) -> str:
    """The URL without its password, for banners, messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


# Celery's own bound on the arguments shown in task events (`argsrepr_maxsize`).
SHOWN_MAX = 1024


def shown(value: Any) -> str:
    """How a message's arguments appear in task events and Flower: masked, then bounded."""
    text = repr(redact(value))
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "..."


def mask_shown_arguments(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: every message (a submit, a retry, a wait, a reconciler's
    republish, a plain `.delay()`) shows its arguments masked, never the secrets in them."""
    if headers is None or not isinstance(body, list | tuple) or len(body) != 3:
        return  # not a protocol 2 message
    args, kwargs, _embed = body
    headers["argsrepr"] = shown(list(args) if isinstance(args, list | tuple) else args)
    headers["kwargsrepr"] = shown(kwargs)
