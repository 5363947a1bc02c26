"""`conveyor queues`: list queues, pause and resume them (the pause is kept in the ledger)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from conveyor.cli.render import AsJson, make_console, print_json, when
from conveyor.cli.system import ledger_session, require_broker
from conveyor.core import queue_control
from conveyor.core.redis_client import get_redis
from conveyor.core.workloads import UnknownQueue

app = typer.Typer(help="Queues: depth, consumers, pause and resume.", no_args_is_help=True)
console = make_console()
errors = make_console(stderr=True)
QueueName = Annotated[str, typer.Argument(metavar="NAME", help="A declared queue.")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]conveyor: {escape(message)}[/red]", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in some containers
        return "cli"


@app.command("list")
def list_queues(as_json: AsJson = False) -> None:
    """Every declared queue: waiting messages, oldest queued job, consumers, pause."""
    with ledger_session() as session:
        overview = queue_control.queue_overview(session, get_redis())
    if as_json:
        print_json([queue.to_dict() for queue in overview])
        return
    table = Table("queue", "state", "depth", "oldest waiting", "consumers", "paused at", "by")
    for queue in overview:
        table.add_row(
            queue.name,
            "[yellow]paused[/yellow]" if queue.paused else "[green]active[/green]",
            "?" if queue.depth is None else str(queue.depth),
            when(queue.oldest_waiting_at),
            ", ".join(queue.consumers) or "[dim]none[/dim]",
            when(queue.paused_at),
            escape(queue.paused_by or ""),
        )
    console.print(table)


@app.command("pause")
def pause(name: QueueName) -> None:
    """Stop workers taking this queue's jobs (running ones finish), also workers started later."""
    require_broker()
    with ledger_session() as session:
        try:
            changed = queue_control.pause(session, name, by=_who())
        except UnknownQueue as exc:
            raise _fail(str(exc)) from None
    told = queue_control.announce(name, paused=True)
    console.print(f"paused {name}" if changed else f"{name} was already paused")
    if not told:
        errors.print("[yellow]workers will notice within one heartbeat[/yellow]")


@app.command("resume")
def resume(name: QueueName) -> None:
    """Let the workers assigned this queue take its jobs again."""
    require_broker()
    with ledger_session() as session:
        try:
            changed = queue_control.resume(session, name)
        except UnknownQueue as exc:
            raise _fail(str(exc)) from None
    told = queue_control.announce(name, paused=False)
    console.print(f"resumed {name}" if changed else f"{name} was not paused")
    if not told:
        errors.print("[yellow]workers will notice within one heartbeat[/yellow]")
