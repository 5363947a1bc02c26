"""Publish N no-op messages for one scenario, then print how long it took (JSON on stdout).

Run by throughput.py in its own process, with the same environment as the scenario's
worker, so each scenario's publisher is exactly the app its worker loads.

    BENCH_SCENARIO=... python bench/_enqueue.py {bare|untracked|tracked|owned} N
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    kind, count = sys.argv[1], int(sys.argv[2])
    import _tasks

    started = time.perf_counter()
    if kind == "bare":
        for _ in range(count):
            _tasks.noop.delay()
    elif kind == "untracked":
        for _ in range(count):
            _tasks.noop_untracked.delay()
    elif kind in ("tracked", "owned"):
        # What the API does for every job: the ledger row is committed, then the message
        # is published (conveyor.core.jobs.submit); API jobs have an owner.
        from conveyor.core.jobs import Submission, submit

        owner = "bench" if kind == "owned" else None
        for _ in range(count):
            submit(Submission(task_name=_tasks.TRACKED_TASK, owner=owner), app=_tasks.app)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    elapsed = time.perf_counter() - started
    print(json.dumps({"count": count, "seconds": elapsed}))


if __name__ == "__main__":
    main()
