"""Locks and key settings, against a fake Redis client (the Lua runs in integration tests)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.exceptions import NoScriptError

from conveyor.core.locks import (
    LOCK_PREFIX,
    Lock,
    LockNotAcquired,
    LuaScript,
    args_digest,
    raw_setting,
    render_key,
)


class FakeRedis:
    """Answers EVALSHA from a queue of replies and records the calls."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[Any, ...]] = []
        self.known_scripts = True

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if not self.known_scripts:
            raise NoScriptError("NOSCRIPT")
        self.calls.append(("evalsha", sha, numkeys, *keys_and_args))
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def eval(self, source: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.calls.append(("eval", source, numkeys, *keys_and_args))
        self.known_scripts = True
        return self.replies[0]


def test_acquire_sends_token_and_ttl_and_reports_the_holders_remaining_time() -> None:
    client = FakeRedis(-1)
    lock = Lock("report:7", ttl=2.5, client=client)  # type: ignore[arg-type]
    assert lock.acquire()
    _, _, numkeys, key, token, ttl_ms = client.calls[0]
    assert (numkeys, key, token, ttl_ms) == (1, LOCK_PREFIX + "report:7", lock.token, 2500)

    busy = FakeRedis(1234)
    other = Lock("report:7", ttl=2.5, client=busy)  # type: ignore[arg-type]
    assert not other.acquire()
    assert other.retry_after == pytest.approx(1.234)
    assert other.token != lock.token


def test_acquire_waits_up_to_its_limit() -> None:
    client = FakeRedis(40, 40, -1)
    lock = Lock("x", ttl=1, client=client, wait=2)  # type: ignore[arg-type]
    assert lock.acquire()
    assert len(client.calls) == 3
    stubborn = Lock("x", ttl=1, client=FakeRedis(500))  # type: ignore[arg-type]
    started = time.monotonic()
    assert not stubborn.acquire(wait=0.15)
    assert 0.1 < time.monotonic() - started < 1


def test_context_manager_raises_when_taken() -> None:
    lock = Lock("x", ttl=1, client=FakeRedis(800))  # type: ignore[arg-type]
    with pytest.raises(LockNotAcquired, match="held by someone else"), lock:
        pass


def test_lock_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="positive"):
        Lock("x", ttl=0)


def test_renewal_extends_until_stopped_and_stops_when_lost() -> None:
    client = FakeRedis(1)
    lock = Lock("x", ttl=1, client=client)  # type: ignore[arg-type]
    lock.start_renewing(interval=0.01)
    time.sleep(0.1)
    lock.stop_renewing()
    extends = len(client.calls)
    assert extends >= 3
    time.sleep(0.05)
    assert len(client.calls) == extends, "no renewal after stop"
    assert not lock.lost

    taken = FakeRedis(0)  # the key holds another token
    lost = Lock("x", ttl=1, client=taken)  # type: ignore[arg-type]
    lost.start_renewing(interval=0.01)
    time.sleep(0.1)
    assert lost.lost
    assert len(taken.calls) == 1, "renewal ends once the lock is lost"
    lost.stop_renewing()


def test_renewal_ends_at_max_hold() -> None:
    client = FakeRedis(1)
    lock = Lock("x", ttl=1, client=client)  # type: ignore[arg-type]
    lock.start_renewing(interval=0.01, max_hold=0.05)
    time.sleep(0.2)
    calls = len(client.calls)
    time.sleep(0.05)
    assert len(client.calls) == calls
    assert calls <= 6
    lock.stop_renewing()


def test_script_is_loaded_again_after_noscript() -> None:
    client = FakeRedis("ok")
    client.known_scripts = False
    script = LuaScript("return 'ok'")
    assert script(client, ["k"], ["a"]) == "ok"  # type: ignore[arg-type]
    assert client.calls[0][:3] == ("eval", "return 'ok'", 1)
    assert script(client, ["k"], ["a"]) == "ok"  # type: ignore[arg-type]
    assert client.calls[1][:2] == ("evalsha", script.sha)


def test_render_key_templates() -> None:
    assert render_key("customer:{customer_id}", (), {"customer_id": 42}) == "customer:42"
    assert render_key("site:{0}", ("example.com",), {}) == "site:example.com"
    assert render_key("{owner}:{kind}", (), {"kind": "a"}, extra={"owner": "o1"}) == "o1:a"
    # An argument named like an extra wins: it is the job's own data.
    assert render_key("{owner}", (), {"owner": "mine"}, extra={"owner": "o1"}) == "mine"
    with pytest.raises(ValueError, match=r"overlap_key template .* no such argument"):
        render_key("c:{customer}", (), {"id": 1}, what="overlap_key")
    with pytest.raises(ValueError, match="no such argument"):
        render_key("{1}", ("only",), {})
    with pytest.raises(TypeError, match="template or a function"):
        render_key(42, (), {})


class Settings:
    plain = staticmethod(lambda args, kwargs: f"static:{args[0]}")
    lam = lambda args, kwargs: f"lambda:{kwargs['x']}"  # noqa: E731 - how authors write it
    prefix = "p"

    def method(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return f"{self.prefix}:{kwargs['x']}"


def test_render_key_callables_and_methods() -> None:
    owner = Settings()
    args, kwargs = ("a",), {"x": 1}
    for attribute, expected in [("lam", "lambda:1"), ("plain", "static:a"), ("method", "p:1")]:
        spec = raw_setting(owner, attribute)
        assert render_key(spec, args, kwargs, task=owner) == expected
    assert raw_setting(owner, "missing") is None
    assert raw_setting(None, "anything") is None


def test_args_digest_is_stable_and_distinguishes_arguments() -> None:
    assert args_digest([1], {"a": 1, "b": 2}) == args_digest((1,), {"b": 2, "a": 1})
    assert args_digest([1], {}) != args_digest([2], {})
    assert args_digest([], {"a": 1}) != args_digest([1], {})
    assert len(args_digest([], {})) == 32
