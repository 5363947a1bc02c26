"""The API process's cache of checked keys: bounded in time and size, keyed by a digest."""

from __future__ import annotations

import time

import pytest

from conveyor.api import key_cache
from conveyor.api.key_cache import CheckedKey, KeyCache

KEY = CheckedKey(id="k1", owner="alice", is_admin=False, last_used_at=None)
PLAINTEXT = "cvk_0123456789ab_" + "s" * 40


def test_a_checked_key_is_trusted_for_its_time_then_looked_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = KeyCache()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache.put(PLAINTEXT, KEY, ttl=5)
    assert cache.get(PLAINTEXT, ttl=5) == KEY
    assert cache.get(PLAINTEXT + "x", ttl=5) is None  # another key, however close
    now[0] += 4.9
    assert cache.get(PLAINTEXT, ttl=5) == KEY
    now[0] += 0.2
    assert cache.get(PLAINTEXT, ttl=5) is None


def test_a_time_of_zero_turns_it_off() -> None:
    cache = KeyCache()
    cache.put(PLAINTEXT, KEY, ttl=0)
    assert cache.get(PLAINTEXT, ttl=5) is None
    cache.put(PLAINTEXT, KEY, ttl=5)
    assert cache.get(PLAINTEXT, ttl=0) is None


def test_it_holds_digests_not_keys_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_cache, "MAX_ENTRIES", 3)
    cache = KeyCache()
    for index in range(3):
        cache.put(f"{PLAINTEXT}{index}", KEY, ttl=60)
    assert all(PLAINTEXT not in digest for digest in cache._entries)
    cache.put(f"{PLAINTEXT}new", KEY, ttl=60)
    assert len(cache._entries) == 1
    assert cache.get(f"{PLAINTEXT}new", ttl=60) == KEY
