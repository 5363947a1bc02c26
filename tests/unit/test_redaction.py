"""Masking secrets in task arguments and results."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conveyor.core.redaction import MAX_STRING, REDACTED, redact


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "api_key",
        "api-key",
        "apiKey",
        "X-API-Key",
        "authorization",
        "Authorization",
        "auth",
        "credentials",
        "private_key",
        "card",
        "card_number",
        "payment_method",
        "cvc",
        "cvv",
        "iban",
        "ssn",
        "signature",
    ],
)
def test_values_under_secret_looking_keys_are_masked(key: str) -> None:
    assert redact({key: "hunter2", "to": "a@example.com"}) == {
        key: REDACTED,
        "to": "a@example.com",
    }


@pytest.mark.parametrize(
    "value", ["hunter2", 1234, None, {"number": "4242", "exp": "12/30"}, ["a", "b"]]
)
def test_every_kind_of_value_under_a_secret_key_is_masked(value: Any) -> None:
    assert redact({"payment_method": value}) == {"payment_method": REDACTED}


@pytest.mark.parametrize(
    "key", ["author", "subject", "steps", "name", "email", "url", "count", "body", "to"]
)
def test_ordinary_keys_are_left_alone(key: str) -> None:
    payload = {key: "plain value", "nested": {key: [1, 2, 3]}}
    assert redact(payload) == payload


def test_secrets_in_nested_dicts_and_lists_are_masked() -> None:
    payload = {
        "user": {"name": "ada", "credentials": {"password": "pw"}},
        "headers": [{"Authorization": "Bearer abc.def"}, {"Accept": "json"}],
        "steps": [[{"token": "t0k3n", "step": 1}]],
    }
    assert redact(payload) == {
        "user": {"name": "ada", "credentials": REDACTED},
        "headers": [{"Authorization": REDACTED}, {"Accept": "json"}],
        "steps": [[{"token": REDACTED, "step": 1}]],
    }


def test_nothing_secret_survives_anywhere_in_the_output() -> None:
    payload = {
        "a": [{"b": {"api_key": "sk_live_SECRET1"}}],
        "c": ({"refresh_token": "SECRET2"},),
        "d": {"e": {"f": {"password": "SECRET3"}}},
    }
    flat = repr(redact(payload))
    for secret in ("SECRET1", "SECRET2", "SECRET3"):
        assert secret not in flat


@pytest.mark.parametrize(
    "number",
    ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"],
)
def test_card_numbers_inside_strings_are_masked(number: str) -> None:
    masked = redact({"note": f"charge {number} today"})
    assert masked == {"note": f"charge {REDACTED} today"}


@pytest.mark.parametrize(
    "text", ["order 12345", "call 555-123-4567", "2024-01-31", "version 1.2.3", "id 123456789012"]
)
def test_short_digit_runs_are_not_mistaken_for_cards(text: str) -> None:
    assert redact(text) == text


def test_card_numbers_in_list_items_are_masked() -> None:
    assert redact(["4111111111111111", "ok"]) == [REDACTED, "ok"]


def test_long_strings_are_truncated_with_a_note() -> None:
    text = "x" * (MAX_STRING + 3000)
    out = redact({"body": text})["body"]
    assert out.startswith("x" * MAX_STRING)
    assert len(out) < len(text)
    assert "3000 more characters" in out
    assert out[MAX_STRING] != "x"


def test_strings_at_the_limit_are_kept_whole() -> None:
    text = "y" * MAX_STRING
    assert redact(text) == text


def test_input_is_not_mutated() -> None:
    payload = {
        "password": "pw",
        "items": [{"token": "t", "card": "4111111111111111"}, ("tuple", "x")],
        "text": "z" * (MAX_STRING * 2),
    }
    before = copy.deepcopy(payload)
    out = redact(payload)
    assert payload == before
    assert out is not payload
    assert out["items"] is not payload["items"]


def test_tuples_become_lists_and_scalars_pass_through() -> None:
    assert redact((1, 2.5, True, None, "s")) == [1, 2.5, True, None, "s"]


def test_non_json_values_become_strings() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing(4111111111111111)"

    out = redact({"thing": Thing(), "items": {1, 2}})
    assert out["thing"] == f"Thing({REDACTED})"
    assert isinstance(out["items"], str)


def test_deep_nesting_is_cut_off_without_recursion_errors() -> None:
    deep: Any = {"password": "at the bottom"}
    for _ in range(50_000):
        deep = {"level": [deep]}
    out = redact(deep)
    assert "at the bottom" not in repr_iterative(out)
    assert "[nested too deep]" in repr_iterative(out)


def test_shallow_secrets_inside_deep_structures_are_still_masked() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    out = redact({"token": "abc", "data": deep})
    assert out["token"] == REDACTED


def repr_iterative(value: Any) -> str:
    """Every string in a structure, joined; iterative so deep results cannot overflow it."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return "\n".join(found)


def test_card_number_passed_as_integer_is_masked() -> None:
    from conveyor.core.redaction import REDACTED, redact

    assert redact({"number": 4111111111111111, "amount": 1999}) == {
        "number": REDACTED,
        "amount": 1999,
    }


def test_the_digit_groups_ending_a_uuid_are_not_a_card_number() -> None:
    job_id = "df1cda29-206b-4f22-8016-935398168571"
    assert redact({"job_id": job_id}) == {"job_id": job_id}
    assert redact("paid with 4242-4242-4242-4242") == "paid with [redacted]"


def test_every_published_message_shows_its_arguments_masked() -> None:
    """Task events and Flower show a message's `argsrepr`/`kwargsrepr`: a submit, a retry,
    a re-published wait and a plain `.delay()` all pass through before_task_publish."""
    from celery import Celery

    from conveyor.core import signals

    signals.install()
    app = Celery("shown", broker="memory://", set_as_current=False)
    secrets = {"password": "pw-live-1", "card": "4242 4242 4242 4242", "note": "x" * 5000}
    app.send_task("shown.task", args=["4111111111111111", 3], kwargs=secrets, queue="shown")
    with app.connection() as connection:
        message = connection.SimpleQueue("shown").get(timeout=5)
        headers = message.headers
        message.ack()
    shown = headers["argsrepr"] + headers["kwargsrepr"]
    for secret in ("pw-live-1", "4242 4242 4242 4242", "4111111111111111"):
        assert secret not in shown
    assert REDACTED in headers["kwargsrepr"]
    assert ", 3]" in headers["argsrepr"]
    assert len(headers["kwargsrepr"]) <= 1024
    assert message.payload[1] == secrets  # the task still gets the real values
