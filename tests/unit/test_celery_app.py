"""The Celery configuration and task routing, without a broker."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor.core.celery_app import celery_config, queue_for, route_task
from conveyor.core.settings import Settings

ALL_QUEUES = {"email", "images", "payments", "reports", "scraping", "webhooks", "default"}


@pytest.fixture
def config() -> dict[str, Any]:
    return celery_config(Settings(redis_url="redis://127.0.0.1:6379/0"))


def test_only_json_is_accepted(config: dict[str, Any]) -> None:
    assert config["task_serializer"] == "json"
    assert config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]


def test_messages_survive_a_worker_dying(config: dict[str, Any]) -> None:
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1


def test_time_limits_fit_inside_the_visibility_timeout(config: dict[str, Any]) -> None:
    soft, hard = config["task_soft_time_limit"], config["task_time_limit"]
    assert 0 < soft < hard
    assert config["broker_transport_options"]["visibility_timeout"] > hard


def test_worker_children_are_recycled(config: dict[str, Any]) -> None:
    assert isinstance(config["worker_max_tasks_per_child"], int)
    assert config["worker_max_tasks_per_child"] > 0
    assert isinstance(config["worker_max_memory_per_child"], int)
    assert config["worker_max_memory_per_child"] > 0


def test_events_are_off_by_default_and_follow_the_setting(config: dict[str, Any]) -> None:
    assert config["worker_send_task_events"] is False
    assert config["task_send_sent_event"] is False
    on = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0", task_events=True))
    assert on["worker_send_task_events"] is True
    assert on["task_send_sent_event"] is True


def test_every_queue_is_declared(config: dict[str, Any]) -> None:
    names = [queue.name for queue in config["task_queues"]]
    assert sorted(names) == sorted(ALL_QUEUES)
    assert all(queue.routing_key == queue.name for queue in config["task_queues"])
    assert config["task_default_queue"] == "default"
    assert config["task_create_missing_queues"] is False
    assert route_task in config["task_routes"]


def test_urls_default_to_the_redis_url(config: dict[str, Any]) -> None:
    assert config["broker_url"] == "redis://127.0.0.1:6379/0"
    assert config["result_backend"] == "redis://127.0.0.1:6379/0"


def test_settings_flow_into_the_config(tmp_path: Path) -> None:
    settings = Settings(
        redis_url="redis://cache:6379/2",
        result_backend_url="redis://results:6379/3",
        task_soft_time_limit=20,
        task_time_limit=25,
        visibility_timeout=30,
        retry_backoff_max=5,
        unacked_restore_interval=2,
        worker_max_tasks_per_child=7,
        worker_max_memory_per_child_kib=20_000,
        worker_concurrency=3,
        result_expires=120,
        data_dir=tmp_path / "state",
    )
    config = celery_config(settings)
    assert config["broker_url"] == "redis://cache:6379/2"
    assert config["result_backend"] == "redis://results:6379/3"
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (20, 25)
    assert config["broker_transport_options"]["visibility_timeout"] == 30
    assert config["broker_transport_options"]["unacked_restore_interval"] == 2
    # A worker killed mid-sweep must not hold back redeliveries for kombu's 5 minutes.
    assert config["broker_transport_options"]["unacked_mutex_expire"] <= 30
    assert config["worker_max_tasks_per_child"] == 7
    assert config["worker_max_memory_per_child"] == 20_000
    assert config["worker_concurrency"] == 3
    assert config["result_expires"] == timedelta(seconds=120)
    assert config["beat_schedule_filename"] == str(tmp_path / "state" / "celerybeat-schedule")


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("conveyor.workloads.email.send", "email"),
        ("conveyor.workloads.images.resize", "images"),
        ("conveyor.workloads.payments.charge", "payments"),
        ("conveyor.workloads.reports.build", "reports"),
        ("conveyor.workloads.scraping.crawl", "scraping"),
        ("conveyor.workloads.crawling.crawl", "default"),
        ("conveyor.webhooks.deliver", "webhooks"),
        ("conveyor.workloads.unknown.thing", "default"),
        ("conveyor.workloads.email", "default"),
        ("conveyor.workloads", "default"),
        ("conveyor.diagnostics.run", "default"),
        ("conveyor.maintenance.purge_dead_letters", "default"),
        ("myapp.email.send", "default"),
        ("email", "default"),
        ("workloads.email.send", "default"),
        ("conveyor.webhooks", "default"),
        ("", "default"),
    ],
)
def test_queue_for_routes_by_task_name(task_name: str, queue: str) -> None:
    assert queue_for(task_name) == queue
    assert route_task(task_name, (), {}, {}) == {"queue": queue}


def test_an_explicit_queue_option_wins() -> None:
    assert route_task("conveyor.workloads.email.send", (), {}, {"queue": "images"}) == {
        "queue": "images"
    }
    assert route_task("conveyor.webhooks.deliver", [], {}, {"queue": "default"}) == {
        "queue": "default"
    }


def test_a_tasks_own_queue_wins_over_its_name() -> None:
    task = SimpleNamespace(queue="payments")
    assert route_task("conveyor.workloads.email.send", (), {}, {}, task=task) == {
        "queue": "payments"
    }
    # ...but an explicit option still wins over the task's own queue.
    assert route_task("x", (), {}, {"queue": "images"}, task=task) == {"queue": "images"}


def test_a_task_without_a_queue_falls_back_to_its_name() -> None:
    task = SimpleNamespace(queue=None)
    assert route_task("conveyor.workloads.email.send", (), {}, {}, task=task) == {"queue": "email"}


def test_configuration_is_read_again_after_settings_could_not_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.core.celery_app import SettingsConfiguredCelery
    from conveyor.core.settings import SettingsError, get_settings

    app = SettingsConfiguredCelery("probe", set_as_current=False)
    # Nothing configured: the error reaches the caller (pytest's collection, say, swallows it).
    with pytest.raises(SettingsError, match="no Conveyor running here"):
        _ = app.conf.broker_url
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://cache:6379/4")
    get_settings.cache_clear()
    assert app.conf.broker_url == "redis://cache:6379/4"
    assert app.conf.task_acks_late is True
    assert "conveyor.diagnostics.tasks" in app.conf.include


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> Any:
    from conveyor.core.settings import get_settings

    def declare(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(f"CONVEYOR_{name.upper()}", value)
        get_settings.cache_clear()

    yield declare
    get_settings.cache_clear()


def test_your_queues_are_declared_and_route_by_pattern(declared: Any) -> None:
    declared(
        queues="billing=myapp.billing.*|myapp.invoices.*, exports",
        redis_url="redis://127.0.0.1:6379/0",
    )
    from conveyor.core.settings import get_settings

    config = celery_config(get_settings())
    names = {queue.name for queue in config["task_queues"]}
    assert names == ALL_QUEUES | {"billing", "exports"}
    assert queue_for("myapp.billing.charge") == "billing"
    assert queue_for("myapp.invoices.send") == "billing"
    assert queue_for("myapp.other") == "default"
    assert route_task("myapp.report", (), {}, {"queue": "exports"}) == {"queue": "exports"}


def test_your_pattern_wins_over_a_workloads(declared: Any) -> None:
    declared(queues="bulk=conveyor.workloads.email.send_batch*")
    assert queue_for("conveyor.workloads.email.send_batch_chunk") == "bulk"
    assert queue_for("conveyor.workloads.email.send") == "email"


def test_an_undeclared_queue_is_an_error_naming_the_setting(declared: Any) -> None:
    from conveyor.core.workloads import UnknownQueue

    declared(queues="billing")
    with pytest.raises(UnknownQueue, match=r"queue 'exports'.*CONVEYOR_QUEUES \(declared: billing"):
        route_task("myapp.report", (), {}, {"queue": "exports"})
    task = SimpleNamespace(queue="invoices")
    with pytest.raises(UnknownQueue, match=r"myapp\.invoice goes to queue 'invoices'"):
        route_task("myapp.invoice", (), {}, {}, task=task)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bill ing", "'bill ing' is not a queue name"),
        ("billing,billing", "queue 'billing' is declared twice"),
        ("=myapp.*", "'' is not a queue name"),
        ("shipping=shop.tasks.*;billing", "'shop.tasks.*;billing' is not a task-name pattern"),
    ],
)
def test_a_malformed_queue_declaration_names_the_setting(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.core.settings import SettingsError, load_settings

    monkeypatch.setenv("CONVEYOR_QUEUES", value)
    with pytest.raises(SettingsError, match=f"CONVEYOR_QUEUES.*{message}"):
        load_settings()


def test_workloads_can_be_chosen_and_a_typo_is_named(declared: Any) -> None:
    from conveyor.core import workloads
    from conveyor.core.settings import SettingsError, get_settings

    declared(workloads="none")
    assert workloads.queues(get_settings()) == ["webhooks", "default"]
    assert "conveyor.workloads.email.tasks" not in workloads.task_modules(get_settings())
    assert queue_for("conveyor.workloads.email.send") == "default"
    declared(workloads="email")
    assert workloads.queues(get_settings()) == ["email", "webhooks", "default"]
    declared(workloads="email,emial")
    with pytest.raises(SettingsError, match="CONVEYOR_WORKLOADS names 'emial', which is not"):
        workloads.enabled(get_settings())


def test_every_installed_workload_registers_through_the_entry_point_group() -> None:
    from conveyor.core import workloads

    installed = workloads.installed()
    assert {"email", "images", "payments"} <= set(installed)
    for workload in installed.values():
        assert workload.tasks.startswith("conveyor.workloads.")


def test_submitting_to_an_undeclared_queue_fails_before_anything_is_recorded(
    declared: Any, tmp_path: Path
) -> None:
    from conveyor.core.jobs import Submission, submit
    from conveyor.core.workloads import UnknownQueue

    database = tmp_path / "ledger.db"
    declared(database_url=f"sqlite:///{database}", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(UnknownQueue, match=r"myapp\.bill goes to queue 'billing'.*CONVEYOR_QUEUES"):
        submit(Submission("myapp.bill", queue="billing"))
    # Refused before the ledger was opened: no database file was even created.
    assert not database.exists()


def test_an_explicit_undeclared_queue_is_conveyors_error_not_celerys(declared: Any) -> None:
    from conveyor.core.celery_app import get_celery
    from conveyor.core.workloads import UnknownQueue

    declared(redis_url="redis://127.0.0.1:1/0")
    # Celery resolves an explicit queue before any router: the app checks it first.
    with pytest.raises(UnknownQueue, match=r"queue 'shiping'.*CONVEYOR_QUEUES"):
        get_celery().send_task("myapp.ship", queue="shiping")


def test_every_thread_sends_through_conveyors_app() -> None:
    import threading

    from celery import current_app

    from conveyor.core.celery_app import get_celery

    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(current_app._get_current_object()))
    thread.start()
    thread.join(5)
    assert seen == [get_celery()]
