"""The overlap rule: may a slot run while earlier runs of the same schedule are still active?"""

from __future__ import annotations

from collections.abc import Iterable

from conveyor.core.models import JobState
from conveyor.core.schedules.models import Overlap

# Waiting for a worker: claimed (job not yet recorded) or queued.
WAITING = frozenset({"claimed", JobState.QUEUED})
ACTIVE = WAITING | {JobState.STARTED, JobState.RETRYING}


def allows(policy: str, states: Iterable[str]) -> bool:
    """`states`: the states of the schedule's recent runs' jobs ("claimed" for a run whose job
    is not recorded yet). skip: none may be active; queue_one: none may be waiting (so at most
    one waits behind a running one); allow: always."""
    if policy == Overlap.ALLOW:
        return True
    if policy == Overlap.QUEUE_ONE:
        return not any(state in WAITING for state in states)
    return not any(state in ACTIVE for state in states)
