"""The overlap rule for a schedule whose earlier runs are still active."""

from __future__ import annotations

import pytest

from conveyor.core.schedules.overlap import allows


@pytest.mark.parametrize(
    ("states", "skip", "queue_one", "allow"),
    [
        ([], True, True, True),
        (["succeeded", "failed", "gone"], True, True, True),
        (["started"], False, True, True),
        (["retrying"], False, True, True),
        (["queued"], False, False, True),
        (["claimed"], False, False, True),
        (["started", "queued"], False, False, True),
        (["dead", "cancelled"], True, True, True),
    ],
)
def test_overlap_policies(states: list[str], skip: bool, queue_one: bool, allow: bool) -> None:
    assert allows("skip", states) is skip
    assert allows("queue_one", states) is queue_one
    assert allows("allow", states) is allow
