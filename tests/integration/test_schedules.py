"""Schedules as data on the real stack: scheduler processes racing for each slot, a killed
one handing over, downtime and the catch-up rule, overlap with a slow task, and the API."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import Process, Stack, wait_for
from tests.integration.test_cli_ops import conveyor

pytestmark = pytest.mark.integration


@pytest.fixture
def start_scheduler(stack: Stack) -> Iterator[Callable[[str], Process]]:
    started: list[Process] = []

    def start(name: str) -> Process:
        process = Process(
            name,
            [sys.executable, "-m", "conveyor.core.schedules.scheduler"],
            stack.env,
            stack.tmp / f"{name}-{uuid.uuid4().hex[:6]}.log",
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def create(client: httpx.Client, **body: Any) -> str:
    response = client.post("/api/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    schedule_id: str = response.json()["id"]
    return schedule_id


def all_runs(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/schedules/{schedule_id}/runs", params={"limit": 500})
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()
    return sorted(runs, key=lambda run: run["slot"])


def slot_of(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["slot"])


def count_runs(client: httpx.Client, schedule_id: str) -> int:
    return len(all_runs(client, schedule_id))


def test_schedulers_race_for_each_slot_hand_over_and_catch_up(
    stack: Stack, admin: httpx.Client, start_scheduler: Callable[[str], Process]
) -> None:
    """Two schedulers for ~10 s, one killed (-9) and the other alone for ~4 s, then none for
    at least 7 s, then a new one: every slot before the downtime ran exactly once, none was
    skipped, and after it only the latest slot within its window ran (about 30 s in all: ten
    raced slots, a hand-over, a downtime across a slot of each 10 s schedule)."""
    group = uuid.uuid4().hex[:8]
    every = create(
        admin,
        name=f"every-second-{group}",
        task="tests.schedules.tick",
        kwargs={"group": group},
        every_seconds=1,
    )
    kept = create(
        admin, name=f"kept-{group}", task="tests.schedules.tick", kwargs={"group": f"{group}-k"},
        every_seconds=10, catch_up_seconds=60,
    )  # fmt: skip
    dropped = create(
        admin, name=f"dropped-{group}", task="tests.schedules.tick",
        kwargs={"group": f"{group}-d"}, every_seconds=10, catch_up_seconds=0,
    )  # fmt: skip
    first, second = start_scheduler("scheduler-a"), start_scheduler("scheduler-b")
    wait_for(lambda: count_runs(admin, every) >= 10, 40, "10 slots with two schedulers")
    first.kill_hard()
    before_kill = count_runs(admin, every)
    wait_for(lambda: count_runs(admin, every) >= before_kill + 4, 20, "the other to carry on")
    second.stop()
    stopped_at = time.time()
    # The downtime covers a slot of the 10 s schedules; the new scheduler starts 6 s after it
    # (its first tick is later still): late by more than ON_TIME_SECONDS (5), so missed.
    boundary = (int(stopped_at + 1) // 10 + 1) * 10
    time.sleep(boundary + 6 - time.time())
    restarted_at = time.time()
    start_scheduler("scheduler-c")
    after = count_runs(admin, every)
    wait_for(lambda: count_runs(admin, every) >= after + 4, 30, "the new scheduler to fire")
    for schedule_id in (every, kept, dropped):
        assert admin.post(f"/api/v1/schedules/{schedule_id}/pause").status_code == 200

    def settled() -> list[dict[str, Any]] | None:
        # A claim in flight when paused, or cut short by the kill, is finished by now.
        runs = all_runs(admin, every)
        return None if any(run["state"] == "claimed" for run in runs) else runs

    runs = wait_for(settled, 30, "claims in flight to be submitted")
    assert {run["state"] for run in runs} <= {"queued", "skipped_missed"}, runs
    slots = [slot_of(run) for run in runs if run["state"] == "queued"]
    missed_slots = {slot_of(run) for run in runs if run["state"] == "skipped_missed"}
    second = timedelta(seconds=1)
    # A claim cut short by the kill is given up and recorded as missed: not a gap.
    long_gaps = [
        later - earlier
        for earlier, later in pairwise(slots)
        if later - earlier > second
        and not (later - earlier == 2 * second and earlier + second in missed_slots)
    ]
    # One gap: the downtime, less the slots still on time (up to 5 s late) when the new
    # scheduler came. Elsewhere every second has its run, across the kill too.
    assert len(long_gaps) == 1, [(run["slot"], run["state"], run["created_at"]) for run in runs]
    assert long_gaps[0] >= timedelta(seconds=restarted_at - stopped_at - 6)
    # The newest missed slot is recorded (1 s window: not run); a claim cut short by the
    # kill may be given up too, recorded, not lost.
    missed_runs = [run for run in runs if run["state"] == "skipped_missed"]
    assert len(missed_runs) in (1, 2), missed_runs
    queued = {run["job_id"] for run in runs if run["state"] == "queued"}
    store = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    key = f"test:schedules:runs:{group}"
    wait_for(lambda: store.hlen(key) >= len(queued), 30, "every queued job to run")
    executions = {k.decode(): int(v) for k, v in store.hgetall(key).items()}
    assert set(executions) == queued
    assert set(executions.values()) == {1}

    # The 20 s slot inside the downtime: run late (60 s window), or recorded as missed (0 s).
    missed = datetime.fromtimestamp(boundary).astimezone()
    kept_run = next(run for run in all_runs(admin, kept) if slot_of(run) == missed)
    dropped_run = next(run for run in all_runs(admin, dropped) if slot_of(run) == missed)
    assert kept_run["state"] == "queued"
    assert datetime.fromisoformat(kept_run["created_at"]) - missed > timedelta(seconds=5)
    assert (dropped_run["state"], dropped_run["job_id"]) == ("skipped_missed", None)
    for schedule_id in (every, kept, dropped):
        assert admin.delete(f"/api/v1/schedules/{schedule_id}").status_code == 204


def intervals(stack: Stack, group: str) -> list[tuple[float, float]]:
    store = redis.Redis.from_url(stack.env["CONVEYOR_REDIS_URL"])
    found = store.lrange(f"test:schedules:intervals:{group}", 0, -1)
    pairs = [tuple(float(part) for part in item.decode().split()) for item in found]
    return sorted((start, end) for start, end in pairs)


@pytest.mark.one_database
def test_overlap_policies_with_a_slow_task(
    stack: Stack, admin: httpx.Client, start_scheduler: Callable[[str], Process]
) -> None:
    """A 2.5 s task every second: `skip` never runs two at once, `queue_one` keeps at most one
    waiting, `allow` queues every slot."""
    group = uuid.uuid4().hex[:8]
    ids = {
        policy: create(
            admin,
            name=f"slow-{policy}-{group}",
            task="tests.schedules.slow",
            kwargs={"group": f"{group}-{policy}", "seconds": 2.5},
            every_seconds=1,
            overlap=policy,
        )
        for policy in ("skip", "queue_one", "allow")
    }
    start_scheduler("scheduler-overlap")

    def seen_enough() -> bool:
        # A busy worker starts the first slow job late; the second skip run comes after it.
        states = [run["state"] for run in all_runs(admin, ids["skip"])]
        return len(states) >= 8 and states.count("queued") >= 2

    wait_for(seen_enough, 90, "8 slots of the skip schedule, two of them queued")
    for schedule_id in ids.values():
        assert admin.post(f"/api/v1/schedules/{schedule_id}/pause").status_code == 200
    by_policy = {policy: all_runs(admin, ids[policy]) for policy in ids}
    # The worker is shared with later tests: the piled-up slow jobs are not left to it.
    for policy in ("queue_one", "allow"):
        for run in by_policy[policy]:
            if run["job_id"]:
                admin.delete(f"/api/v1/jobs/{run['job_id']}")

    skip_states = [run["state"] for run in by_policy["skip"]]
    assert "skipped_overlap" in skip_states
    assert skip_states.count("queued") >= 2
    wait_for(
        lambda: len(intervals(stack, f"{group}-skip")) >= skip_states.count("queued"),
        40,
        "the skip schedule's jobs to finish",
    )
    ran = intervals(stack, f"{group}-skip")
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(ran)), ran

    queue_one = [run["state"] for run in by_policy["queue_one"]]
    assert "skipped_overlap" in queue_one
    assert queue_one.count("queued") >= 2
    assert {run["state"] for run in by_policy["allow"]} == {"queued"}
    for schedule_id in ids.values():
        assert admin.delete(f"/api/v1/schedules/{schedule_id}").status_code == 204


def test_schedules_api(stack: Stack, admin: httpx.Client) -> None:
    alice = stack.client(stack.key_for("sched-alice"))
    bob = stack.client(stack.key_for("sched-bob"))
    body = {
        "name": "daily",
        "task": "tests.schedules.tick",
        "kwargs": {"group": "api"},
        "cron": "0 7 * * *",
        "timezone": "Europe/Berlin",
    }
    schedule_id = create(alice, **body)
    got = alice.get(f"/api/v1/schedules/{schedule_id}").json()
    assert got["source"] == "data"
    assert (got["owner"], got["overlap"], got["catch_up_seconds"]) == ("sched-alice", "allow", 300)
    assert got["next_slot"].endswith(("T06:00:00+00:00", "T05:00:00+00:00"))
    assert alice.post("/api/v1/schedules", json=body).status_code == 409

    listed = alice.get("/api/v1/schedules").json()["items"]
    assert [s["id"] for s in listed if s["source"] == "data"] == [schedule_id]
    code = [s for s in listed if s["source"] == "code"]
    assert {"code:cleanup", "code:reconcile"} <= {s["id"] for s in code}
    assert all(s["args"] is None for s in code)  # arguments are for admins
    assert alice.patch("/api/v1/schedules/code:cleanup", json={"enabled": False}).status_code == 409
    assert alice.get("/api/v1/schedules/code:cleanup").json()["task"] == (
        "conveyor.maintenance.cleanup"
    )

    # Another owner sees nothing of it; an admin sees it.
    assert bob.get(f"/api/v1/schedules/{schedule_id}").status_code == 404
    assert bob.post(f"/api/v1/schedules/{schedule_id}/trigger").status_code == 404
    assert bob.delete(f"/api/v1/schedules/{schedule_id}").status_code == 404
    assert not [s for s in bob.get("/api/v1/schedules").json()["items"] if s["source"] == "data"]
    assert admin.get(f"/api/v1/schedules/{schedule_id}").status_code == 200

    paused = alice.post(f"/api/v1/schedules/{schedule_id}/pause").json()
    assert (paused["enabled"], paused["next_slot"]) == (False, None)
    resumed = alice.post(f"/api/v1/schedules/{schedule_id}/resume").json()
    assert resumed["enabled"]
    assert resumed["next_slot"] is not None
    changed = alice.patch(f"/api/v1/schedules/{schedule_id}", json={"every_seconds": 3600})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["cron"], changed.json()["every_seconds"]) == (None, 3600)

    triggered = alice.post(f"/api/v1/schedules/{schedule_id}/trigger")
    assert triggered.status_code == 202, triggered.text
    job_id = triggered.json()["job_id"]
    assert stack.wait_job(job_id, {"succeeded"})["name"] == "tests.schedules.tick"
    runs = alice.get(f"/api/v1/schedules/{schedule_id}/runs").json()
    assert [(run["job_id"], run["kind"], run["state"]) for run in runs] == [
        (job_id, "manual", "queued")
    ]
    assert alice.get(f"/api/v1/schedules/{schedule_id}/runs", params={"offset": 1}).json() == []

    assert alice.delete(f"/api/v1/schedules/{schedule_id}").status_code == 204
    assert alice.get(f"/api/v1/schedules/{schedule_id}").status_code == 404
    alice.close()
    bob.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": None}, "cron, every_seconds"),
        ({"every_seconds": 60}, "cron, every_seconds"),
        ({"task": "tests.schedules.nope"}, "task"),
        ({"task": "conveyor.maintenance.cleanup"}, "task"),
        ({"overlap": "sometimes"}, "overlap"),
    ],
)
def test_bad_schedules_are_422_naming_the_field(
    stack: Stack, change: dict[str, Any], field: str
) -> None:
    body = {"name": "bad", "task": "tests.schedules.tick", "cron": "0 7 * * *", **change}
    with stack.client(stack.key_for("sched-carol")) as carol:
        response = carol.post("/api/v1/schedules", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}:"), response.text


def test_admins_may_schedule_conveyors_own_tasks(admin: httpx.Client) -> None:
    schedule_id = create(
        admin, name=f"cleanup-{uuid.uuid4().hex[:6]}", task="conveyor.maintenance.cleanup",
        every_seconds=86400, enabled=False,
    )  # fmt: skip
    assert admin.delete(f"/api/v1/schedules/{schedule_id}").status_code == 204


@pytest.mark.one_database  # the CLI's output and exit codes; the store: test_schedules_api
def test_schedules_cli(stack: Stack) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    added = conveyor(
        stack, "schedules", "add", name, "tests.schedules.tick", "--cron", "30 2 * * *",
        "--timezone", "Europe/Berlin", "--kwargs", '{"group": "cli"}', "--overlap", "skip",
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    schedule_id = added.stdout.strip().splitlines()[-1]
    listed = conveyor(stack, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[schedule_id]["overlap"] == "skip"
    assert rows["code:cleanup"]["source"] == "code"

    ran = conveyor(stack, "schedules", "run", name)
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip().splitlines()[-1]
    stack.wait_job(job_id, {"succeeded"})
    history = conveyor(stack, "schedules", "history", schedule_id, "--json")
    assert [(run["job_id"], run["kind"]) for run in json.loads(history.stdout)] == [
        (job_id, "manual")
    ]
    assert conveyor(stack, "schedules", "pause", name).returncode == 0
    assert conveyor(stack, "schedules", "resume", name).returncode == 0

    bad = conveyor(stack, "schedules", "add", "x", "tests.schedules.tick", "--cron", "61 * * * *")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "cron: '61 * * * *' is not a valid cron expression" in bad.stderr
    missing = conveyor(stack, "schedules", "delete", "no-such-schedule")
    assert missing.returncode == 1
    assert "no schedule no-such-schedule" in missing.stderr
    assert conveyor(stack, "schedules", "delete", schedule_id).returncode == 0
