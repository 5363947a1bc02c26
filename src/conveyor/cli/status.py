"""`conveyor status`: queue depths, live workers and recent failures."""

from __future__ import annotations

import typer
from rich.table import Table

from conveyor.cli.render import AsJson, letter_json, make_console, print_json, state, when
from conveyor.cli.system import describe, ledger_session, require_broker
from conveyor.core import brokers, dead_letters, ledger
from conveyor.core.celery_app import get_celery
from conveyor.core.health import live_workers
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, get_settings
from conveyor.core.workloads import queues

console = make_console()


def status(as_json: AsJson = False) -> None:
    """Queue depths, live workers, jobs by state and the latest dead letters."""
    settings = get_settings()
    with ledger_session() as session:
        counts = ledger.count_by_state(session)
        letters = dead_letters.list_letters(session, limit=10)
    require_broker()
    depths = _queue_depths(settings)
    app = get_celery()
    names = live_workers(app)
    active = app.control.inspect(destination=names, timeout=1.0).active() if names else None
    held = {name: len((active or {}).get(name, [])) for name in names}
    if as_json:
        print_json(
            {
                **_system(settings),
                "queues": depths,
                "workers": [{"name": name, "active_jobs": held[name]} for name in names],
                "jobs": dict(sorted(counts.items())),
                "dead_letters": [letter_json(letter) for letter in letters],
            }
        )
        if not names:
            make_console(stderr=True).print("[red]no worker answered[/red]")
            raise typer.Exit(1)
        return

    system = Table.grid(padding=(0, 2))
    for label, value in describe(settings):
        system.add_row(label, value)
    console.print(system)
    queue_table = Table("queue", "waiting", title="Queues")
    for queue, waiting in depths.items():
        queue_table.add_row(queue, str(waiting))
    console.print(queue_table)

    workers = Table("worker", "active jobs", title="Workers")
    for name in names:
        workers.add_row(name, str(held[name]))
    if not names:
        workers.add_row("[red]no worker answered[/red]", "")
    console.print(workers)

    jobs_table = Table("state", "jobs", title="Jobs")
    for name, count in sorted(counts.items()):
        jobs_table.add_row(state(name), str(count))
    console.print(jobs_table)

    failures = Table("failed", "task", "reason", "error", "id", title="Recent dead letters")
    for letter in letters:
        failures.add_row(
            when(letter.failed_at),
            letter.task_name,
            letter.reason,
            f"{letter.error_type}: {letter.error_message[:60]}",
            letter.id,
        )
    console.print(failures)
    if not names:
        raise typer.Exit(1)


def _queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue."""
    return brokers.queue_depths(queues(settings), settings)


def _system(settings: Settings) -> dict[str, object]:
    """Which Redis, database and API this command read, passwords cut out of the URLs."""
    return {
        "redis": {"url": safe_url(settings.redis), "source": settings.source_of("redis_url")},
        "database": {
            "url": safe_url(settings.database),
            "source": settings.source_of("database_url"),
        },
        "api_url": settings.runtime.api_url if settings.runtime is not None else None,
    }
