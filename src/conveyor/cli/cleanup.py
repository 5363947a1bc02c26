"""`conveyor cleanup`: prune the ledger now, as the hourly Beat task does."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from conveyor.cli.render import make_console
from conveyor.cli.system import ledger_session
from conveyor.core import cleanup as pruning

console = make_console()


def cleanup(
    jobs_days: Annotated[
        float | None,
        typer.Option(min=0, metavar="DAYS", help="Default: CONVEYOR_JOB_RETENTION_DAYS."),
    ] = None,
    dead_letters_days: Annotated[
        float | None,
        typer.Option(min=0, metavar="DAYS", help="Default: CONVEYOR_DEAD_LETTER_RETENTION_DAYS."),
    ] = None,
    webhook_deliveries_days: Annotated[
        float | None,
        typer.Option(
            min=0, metavar="DAYS", help="Default: CONVEYOR_WEBHOOK_DELIVERY_RETENTION_DAYS."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=10,
            metavar="ROWS",
            help="Rows deleted per transaction. Default: CONVEYOR_CLEANUP_BATCH_SIZE.",
        ),
    ] = None,
) -> None:
    """Prune finished jobs, expired idempotency keys, old webhook deliveries and dead letters."""
    defaults = pruning.Retention.from_settings()
    retention = pruning.Retention(
        jobs_days=defaults.jobs_days if jobs_days is None else jobs_days,
        dead_letters_days=(
            defaults.dead_letters_days if dead_letters_days is None else dead_letters_days
        ),
        webhook_deliveries_days=(
            defaults.webhook_deliveries_days
            if webhook_deliveries_days is None
            else webhook_deliveries_days
        ),
        batch_size=batch_size or defaults.batch_size,
    )
    with ledger_session() as session:
        removed = pruning.run_cleanup(session, retention)
    table = Table("what", "removed", title="Cleanup")
    for name, count in removed.items():
        table.add_row(name.replace("_", " "), str(count))
    console.print(table)
