"""Exactly-once effects: claims, results, release on failure, takeover, and job ids (SQLite)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from conveyor.core import effects
from conveyor.core.effects import EffectInProgress, deterministic_job_id, effect_once
from conveyor.core.errors import ErrorKind, classify
from conveyor.core.models import TaskEffect


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def row(sessions: sessionmaker[Session], key: str) -> TaskEffect | None:
    with sessions() as session:
        return session.get(TaskEffect, key)


# --- deterministic job ids -----------------------------------------------------------------


def test_deterministic_job_id_is_a_stable_uuid5() -> None:
    first = deterministic_job_id("emails", "order-42")
    assert first == deterministic_job_id("emails", "order-42")
    parsed = uuid.UUID(first)
    assert parsed.version == 5
    assert str(parsed) == first


def test_deterministic_job_id_differs_by_namespace_and_key() -> None:
    ids = {
        deterministic_job_id("emails", "order-42"),
        deterministic_job_id("emails", "order-43"),
        deterministic_job_id("reports", "order-42"),
        # No separator games: ("a", "b:c") and ("a:b", "c") are different.
        deterministic_job_id("a", "b:c"),
        deterministic_job_id("a:b", "c"),
    }
    assert len(ids) == 5


def test_deterministic_job_id_needs_both_parts() -> None:
    with pytest.raises(ValueError, match="empty"):
        deterministic_job_id("", "k")
    with pytest.raises(ValueError, match="empty"):
        deterministic_job_id("ns", "")


# --- effect_once ---------------------------------------------------------------------------


def test_effect_runs_once_and_later_runs_get_its_result(sessions: sessionmaker[Session]) -> None:
    performed: list[int] = []
    results = []
    for attempt in range(3):
        with effect_once("send:1", sessions=sessions, task_name="t", job_id=f"j{attempt}") as fx:
            if not fx.done:
                performed.append(attempt)
                fx.result = {"message_id": "m-1", "attempt": attempt}
        assert fx.done
        results.append(fx.result)
    assert performed == [0]
    assert results == [{"message_id": "m-1", "attempt": 0}] * 3
    stored = row(sessions, "send:1")
    assert stored is not None
    assert stored.task_name == "t"
    assert stored.job_id == "j0"
    assert stored.result == {"value": {"message_id": "m-1", "attempt": 0}}


def test_a_none_result_still_counts_as_done(sessions: sessionmaker[Session]) -> None:
    with effect_once("none", sessions=sessions) as fx:
        assert not fx.done
    with effect_once("none", sessions=sessions) as fx:
        assert fx.done
        assert fx.result is None


def test_results_are_stored_as_json(sessions: sessionmaker[Session]) -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    with effect_once("json", sessions=sessions) as fx:
        fx.result = {"when": when, "ids": (1, 2)}
    # The first run sees what every later run will see.
    assert fx.result == {"when": str(when), "ids": [1, 2]}
    with effect_once("json", sessions=sessions) as again:
        assert again.result == fx.result


def test_a_failed_effect_releases_its_claim(sessions: sessionmaker[Session]) -> None:
    def charge() -> None:
        with effect_once("charge:9", sessions=sessions, job_id="j1") as fx:
            assert not fx.done
            raise ConnectionError("gateway down")

    with pytest.raises(ConnectionError):
        charge()
    assert row(sessions, "charge:9") is None
    # Even another job can now perform it.
    with effect_once("charge:9", sessions=sessions, job_id="j2") as fx:
        assert not fx.done
        fx.result = "ch_1"
    assert row(sessions, "charge:9") is not None


def test_a_live_claim_of_another_job_is_in_progress(sessions: sessionmaker[Session]) -> None:
    with effect_once("busy", sessions=sessions, job_id="j1") as outer:
        assert not outer.done
        with (
            pytest.raises(EffectInProgress, match="busy"),
            effect_once("busy", sessions=sessions, job_id="j2"),
        ):
            pass
        outer.result = 1
    # The loser's error did not release the winner's claim.
    with effect_once("busy", sessions=sessions, job_id="j2") as fx:
        assert fx.done
        assert fx.result == 1


def test_in_progress_is_a_transient_error() -> None:
    assert classify(EffectInProgress("k")) is ErrorKind.TRANSIENT


def test_the_same_job_takes_over_its_own_abandoned_claim(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        effects.claim(session, "crash", task_name="t", job_id="j1", lease_seconds=3600)
    # The worker died mid-effect; the redelivered job (same id) may perform it.
    with effect_once("crash", sessions=sessions, job_id="j1") as fx:
        assert not fx.done
        fx.result = "redone"
    stored = row(sessions, "crash")
    assert stored is not None
    assert stored.result == {"value": "redone"}


def test_another_job_takes_over_only_after_the_lease(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        first = effects.claim(session, "lease", task_name="t", job_id="j1", lease_seconds=60)
        assert isinstance(first, effects.Claimed)
        soon = datetime.now(UTC) + timedelta(seconds=30)
        with pytest.raises(EffectInProgress):
            effects.claim(session, "lease", task_name="t", job_id="j2", lease_seconds=60, now=soon)
        late = datetime.now(UTC) + timedelta(seconds=61)
        second = effects.claim(
            session, "lease", task_name="t", job_id="j2", lease_seconds=60, now=late
        )
        assert isinstance(second, effects.Claimed)
        # The first run, if it still finished, cannot record over the new claim.
        assert not effects.complete(session, "lease", first.token, "late")
        assert not effects.release(session, "lease", first.token)
        assert effects.complete(session, "lease", second.token, "ok")
    stored = row(sessions, "lease")
    assert stored is not None
    assert stored.job_id == "j2"
    assert stored.result == {"value": "ok"}


def test_forget_lets_the_effect_run_again(sessions: sessionmaker[Session]) -> None:
    with effect_once("again", sessions=sessions) as fx:
        fx.result = 1
    with sessions() as session:
        assert effects.forget(session, "again")
    with effect_once("again", sessions=sessions) as fx:
        assert not fx.done


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_bad_keys_are_refused(sessions: sessionmaker[Session], key: str) -> None:
    with pytest.raises(ValueError, match="effect key"), effect_once(key, sessions=sessions):
        pass


def test_concurrent_runs_perform_the_effect_once(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    threads = 12
    barrier = threading.Barrier(threads)
    performed: list[int] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        try:
            with effect_once("race", sessions=sessions, job_id=f"job-{n}") as fx:
                if not fx.done:
                    with lock:
                        performed.append(n)
                    time.sleep(0.3)  # hold the claim while the others arrive
                    fx.result = n
            outcome = "done" if fx.result is not None else "?"
        except EffectInProgress:
            outcome = "in_progress"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(performed) == 1
    assert len(outcomes) == threads
    assert outcomes.count("in_progress") >= 1
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(TaskEffect)) == 1
    stored = row(sessions, "race")
    assert stored is not None
    assert stored.result == {"value": performed[0]}


def test_run_once_calls_the_function_once(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(effects, "session_factory", lambda: sessions)
    calls: list[tuple[Any, ...]] = []

    def charge(amount: int, *, currency: str) -> dict[str, Any]:
        calls.append((amount, currency))
        return {"charge": f"ch_{amount}", "currency": currency}

    first = effects.run_once("charge:order-1", charge, 500, currency="USD")
    second = effects.run_once("charge:order-1", charge, 999, currency="EUR")
    assert first == second == {"charge": "ch_500", "currency": "USD"}
    assert calls == [(500, "USD")]
