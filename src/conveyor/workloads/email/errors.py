"""Errors of the email workload, each naming the request field it is about."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input that cannot become an email; the API answers 422 with `field: message`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
