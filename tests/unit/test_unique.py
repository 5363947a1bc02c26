"""Which claim a submission needs (no servers: the claim itself runs in integration tests)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.core.locks import args_digest
from conveyor.core.unique import UNIQUE_PREFIX, UniqueSpec, spec_for


class Plain:
    pass


class PerCustomer:
    unique_for = 60
    unique_key = "{customer_id}"


class PerArguments:
    unique_for = 30


class Computed:
    unique_for = 10
    unique_key = lambda args, kwargs: f"first:{args[0]}"  # noqa: E731


class FakeApp:
    def __init__(self, **tasks: Any) -> None:
        self.tasks = {name: task() for name, task in tasks.items()}


APP: Any = FakeApp(plain=Plain, per_customer=PerCustomer, per_args=PerArguments, computed=Computed)


def test_no_claim_without_unique_for() -> None:
    assert spec_for("plain", [], {}, app=APP) is None
    assert spec_for("not.registered", [], {}, app=APP) is None
    assert spec_for("plain", [], {}) is None


def test_task_class_template_and_owner_scope() -> None:
    spec = spec_for("per_customer", [], {"customer_id": "c1", "x": 1}, owner="alice", app=APP)
    assert spec == UniqueSpec(key=f"{UNIQUE_PREFIX}per_customer:alice:c1", ttl=60.0)
    anonymous = spec_for("per_customer", [], {"customer_id": "c1"}, app=APP)
    assert anonymous is not None
    assert anonymous.key == f"{UNIQUE_PREFIX}per_customer:-:c1"


def test_default_key_is_the_arguments() -> None:
    spec = spec_for("per_args", [1], {"a": 2}, app=APP)
    assert spec == UniqueSpec(
        key=f"{UNIQUE_PREFIX}per_args:-:{args_digest([1], {'a': 2})}", ttl=30.0
    )
    other = spec_for("per_args", [2], {"a": 2}, app=APP)
    assert other is not None
    assert other.key != spec.key


def test_function_key() -> None:
    spec = spec_for("computed", ["x", "y"], {}, app=APP)
    assert spec is not None
    assert spec.key.endswith(":-:first:x")


def test_submission_settings_win_and_are_literal() -> None:
    spec = spec_for("per_customer", [], {}, unique_key="{not-a-template}", unique_for=5, app=APP)
    assert spec == UniqueSpec(key=f"{UNIQUE_PREFIX}per_customer:-:{{not-a-template}}", ttl=5.0)
    only_ttl = spec_for("plain", [3], {}, unique_for=7, app=APP)
    assert only_ttl is not None
    assert only_ttl.key.endswith(args_digest([3], {}))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="needs unique_for"):
        spec_for("plain", [], {}, unique_key="k", app=APP)
    with pytest.raises(ValueError, match="positive"):
        spec_for("plain", [], {}, unique_for=0, app=APP)
    with pytest.raises(ValueError, match="no such argument"):
        spec_for("per_customer", [], {"other": 1}, app=APP)
