"""Addresses and header values: validated before anything is stored, so no CR/LF or
malformed address can reach a header (email.policy.SMTP refuses them again when sending)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError, validate_email

from conveyor.workloads.email.errors import InvalidInput

MAX_NAME = 200
MAX_HEADER_VALUE = 998  # RFC 5322's line limit
# Every character str.splitlines() breaks at: the email package splits header values there,
# so a U+2028 passed here and failed in the worker as a broken header.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# C0 and C1 controls (tab allowed).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Address:
    email: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.email.rsplit("@", 1)[1].lower()

    def to_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Address:
        return cls(email=str(data["email"]), name=str(data.get("name") or ""))


def check_header_value(value: str, field: str, *, max_length: int = MAX_HEADER_VALUE) -> str:
    """A value that becomes (part of) a header: one line, no control characters."""
    if _LINE_BREAK.search(value):
        raise InvalidInput(
            field, "must not contain line breaks (CR, LF, U+0085, U+2028, U+2029 or the like)"
        )
    if _CONTROL.search(value):
        raise InvalidInput(field, "must not contain control characters")
    if len(value) > max_length:
        raise InvalidInput(field, f"at most {max_length} characters")
    return value


def normalize_email(value: str, field: str) -> str:
    """The address in its normalized ASCII form (IDNA domain); no DNS lookups."""
    try:
        valid = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput(field, f"{value!r} is not a valid email address: {exc}") from None
    return valid.ascii_email or valid.normalized


def parse_address(value: str, field: str) -> Address:
    """`a@example.com` or `Ada Lovelace <a@example.com>`: exactly one address."""
    check_header_value(value, field)
    found = getaddresses([value])
    if len(found) != 1 or not found[0][1]:
        raise InvalidInput(field, f"{value!r} must be one address, like 'Ada <ada@example.com>'")
    name, addr = found[0]
    if len(name) > MAX_NAME:
        raise InvalidInput(field, f"the display name is longer than {MAX_NAME} characters")
    return Address(email=normalize_email(addr, field), name=name.strip())


def parse_addresses(values: list[str], field: str, *, limit: int) -> list[Address]:
    if len(values) > limit:
        raise InvalidInput(field, f"at most {limit} recipients per email (got {len(values)})")
    return [parse_address(value, f"{field}[{index}]") for index, value in enumerate(values)]
