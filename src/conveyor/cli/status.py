"""`conveyor status`: queue depths, live workers and recent failures."""

from __future__ import annotations

import typer
from rich.table import Table

from conveyor.cli.render import make_console, state, when
from conveyor.cli.system import describe, ledger_session, require_broker
from conveyor.core import dead_letters, ledger
from conveyor.core.celery_app import get_celery
from conveyor.core.health import live_workers
from conveyor.core.redis_client import get_redis
from conveyor.core.settings import QUEUES, get_settings

console = make_console()


def status() -> None:
    """Queue depths, live workers, jobs by state and the latest dead letters."""
    settings = get_settings()
    with ledger_session() as session:
        counts = ledger.count_by_state(session)
        letters = dead_letters.list_letters(session, limit=10)
    require_broker()
    system = Table.grid(padding=(0, 2))
    for label, value in describe(settings):
        system.add_row(label, value)
    console.print(system)
    queues = Table("queue", "waiting", title="Queues")
    if settings.broker.startswith(("redis://", "rediss://")):
        client = get_redis()
        for queue in QUEUES:
            queues.add_row(queue, str(client.llen(queue)))
    else:
        queues.add_row("(broker is not Redis)", "")
    console.print(queues)

    app = get_celery()
    workers = Table("worker", "active jobs", title="Workers")
    names = live_workers(app)
    active = app.control.inspect(destination=names, timeout=1.0).active() if names else None
    for name in names:
        workers.add_row(name, str(len((active or {}).get(name, []))))
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
