"""How a Celery canvas is flattened into ledger rows with workflow stages."""

from __future__ import annotations

from celery import Signature, chain, chord, group

from conveyor.core.jobs import _flatten, workflow_kind


def sig(name: str, *args: object) -> Signature:
    return Signature(f"tests.{name}", args=args)


def stages(canvas: Signature) -> tuple[list[tuple[str, int]], int]:
    steps, after = _flatten(canvas, 0)
    return [(str(s.task), stage) for s, stage in steps], after


def test_a_single_task_is_stage_zero() -> None:
    assert stages(sig("a", 1)) == ([("tests.a", 0)], 1)
    assert workflow_kind(sig("a")) == "task"


def test_chain_steps_get_consecutive_stages() -> None:
    canvas = chain(sig("a", 1), sig("b", 2), sig("c", 3))
    assert workflow_kind(canvas) == "chain"
    assert stages(canvas) == ([("tests.a", 0), ("tests.b", 1), ("tests.c", 2)], 3)


def test_group_members_share_one_stage() -> None:
    canvas = group(sig("a"), sig("b"), sig("c"))
    assert workflow_kind(canvas) == "group"
    assert stages(canvas) == ([("tests.a", 0), ("tests.b", 0), ("tests.c", 0)], 1)


def test_chord_body_comes_after_its_header() -> None:
    canvas = chord([sig("a"), sig("b"), sig("c")], sig("total"))
    assert workflow_kind(canvas) == "chord"
    assert stages(canvas) == (
        [("tests.a", 0), ("tests.b", 0), ("tests.c", 0), ("tests.total", 1)],
        2,
    )


def test_a_chain_through_a_group() -> None:
    canvas = sig("fetch") | group(sig("resize"), sig("thumb")) | sig("notify")
    assert workflow_kind(canvas) == "chain"
    assert stages(canvas) == (
        [("tests.fetch", 0), ("tests.resize", 1), ("tests.thumb", 1), ("tests.notify", 2)],
        3,
    )


def test_a_group_of_chains_ends_after_its_longest_member() -> None:
    canvas = group(chain(sig("a1"), sig("a2"), sig("a3")), sig("b1"))
    assert stages(canvas) == (
        [("tests.a1", 0), ("tests.a2", 1), ("tests.a3", 2), ("tests.b1", 0)],
        3,
    )


def test_flatten_starts_at_the_given_stage() -> None:
    steps, after = _flatten(chain(sig("a"), sig("b")), 5)
    assert [stage for _, stage in steps] == [5, 6]
    assert after == 7


def test_flatten_keeps_the_signatures_themselves() -> None:
    a, b = sig("a", 1, 2), sig("b", 3)
    steps, _ = _flatten(chain(a, b), 0)
    assert [tuple(s.args) for s, _ in steps] == [(1, 2), (3,)]
