"""`conveyor scheduler` (the process) and `conveyor schedules` (list, add, pause, resume, run,
history, delete): schedules as data, operated on the ledger directly, with an admin's reach."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from conveyor.cli.render import AsJson, make_console, print_json, state, when
from conveyor.cli.system import ledger_session, require_broker
from conveyor.core.schedules import code, service
from conveyor.core.schedules.models import Schedule
from conveyor.core.schedules.slots import ScheduleError

app = typer.Typer(
    help="Schedules as data: periodic jobs, exactly once per slot.", no_args_is_help=True
)
console = make_console()
errors = make_console(stderr=True)

ScheduleKey = Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="Schedule id or name.")]
Owner = Annotated[
    str | None,
    typer.Option(metavar="OWNER", help="Whose schedule (names are unique per owner)."),
]


def scheduler() -> None:
    """Run a scheduler for schedules as data; run as many as you like, each slot fires once."""
    from conveyor.core.schedules.scheduler import main

    main()


def _fail(message: str, code_: int = 1) -> typer.Exit:
    errors.print(f"[red]conveyor: {escape(message)}[/red]", highlight=False, soft_wrap=True)
    return typer.Exit(code_)


def _get(session: Session, key: str, owner: str | None) -> Schedule:
    if key.startswith(code.ID_PREFIX):
        raise _fail(f"{key} is defined in code (Celery Beat); change it there")
    found = service.find(session, key, owner)
    if found is None:
        whose = f" of {owner}" if owner else ""
        raise _fail(f"no schedule {key}{whose} (a name shared by owners needs --owner)")
    return found


def _timing(row: dict[str, Any]) -> str:
    if row["cron"]:
        return f"{row['cron']} ({row['timezone']})"
    return f"every {row['every_seconds']}s" if row["every_seconds"] else "-"


def _registered() -> set[str]:
    from conveyor.core.celery_app import get_celery

    return set(get_celery().tasks.keys())


@app.command("list")
def list_schedules(owner: Owner = None, as_json: AsJson = False) -> None:
    """Code-defined schedules (read-only) and schedules as data."""
    from conveyor.core.celery_app import get_celery

    rows = code.entries(dict(get_celery().conf.beat_schedule or {}), with_arguments=True)
    with ledger_session() as session:
        rows += [service.to_dict(s) for s in service.list_schedules(session, owner, limit=10_000)]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "source", "owner", "name", "task", "when", "overlap", "state", "next")
    for row in rows:
        table.add_row(
            row["id"],
            row["source"],
            row["owner"] or "",
            row["name"],
            row["task"] or "",
            _timing(row),
            row["overlap"] or "",
            "enabled" if row["enabled"] else "paused",
            (row["next_slot"] or "")[:19].replace("T", " "),
        )
    console.print(table)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Unique among the owner's schedules.")],
    task: Annotated[str, typer.Argument(help="A registered task's name.")],
    cron: Annotated[str | None, typer.Option(help="5 cron fields, e.g. '0 7 * * *'.")] = None,
    every: Annotated[
        int | None, typer.Option(metavar="SECONDS", help="Or: every N seconds.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron.")] = "UTC",
    args: Annotated[str, typer.Option(metavar="JSON", help="Positional arguments.")] = "[]",
    kwargs: Annotated[str, typer.Option(metavar="JSON", help="Keyword arguments.")] = "{}",
    overlap: Annotated[str, typer.Option(help="skip, queue_one or allow.")] = "allow",
    catch_up: Annotated[
        int | None, typer.Option(metavar="SECONDS", help="How late a slot may still run.")
    ] = None,
    owner: Annotated[str, typer.Option(help="The owner whose API keys see it.")] = "ops",
) -> None:
    """Create a schedule; prints its id."""
    try:
        parsed_args, parsed_kwargs = json.loads(args), json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise _fail(f"--args/--kwargs: not JSON ({exc})", 2) from None
    if not isinstance(parsed_args, list) or not isinstance(parsed_kwargs, dict):
        raise _fail("--args takes a JSON list, --kwargs a JSON object", 2)
    fields = service.Fields(
        name=name,
        task=task,
        args=parsed_args,
        kwargs=parsed_kwargs,
        cron=cron,
        timezone=timezone,
        every_seconds=every,
        overlap=overlap,
        catch_up_seconds=catch_up,
    )
    registered = _registered()
    with ledger_session() as session:
        try:
            schedule = service.create(session, owner, fields, registered=registered, is_admin=True)
        except ScheduleError as exc:
            raise _fail(str(exc), 2) from None
        console.print(schedule.id, highlight=False)


def _set_enabled(key: str, owner: str | None, enabled: bool) -> None:
    with ledger_session() as session:
        schedule = service.set_enabled(session, _get(session, key, owner), enabled)
        console.print(f"{'resumed' if enabled else 'paused'} {schedule.name} ({schedule.id})")


@app.command("pause")
def pause(key: ScheduleKey, owner: Owner = None) -> None:
    """Stop firing until resumed."""
    _set_enabled(key, owner, False)


@app.command("resume")
def resume(key: ScheduleKey, owner: Owner = None) -> None:
    """Fire again from the next slot (the slots paused are not caught up)."""
    _set_enabled(key, owner, True)


@app.command("run")
def run(key: ScheduleKey, owner: Owner = None) -> None:
    """Run the schedule's task now; prints the job id."""
    from conveyor.core.schedules.scheduler import submit_job

    require_broker()
    with ledger_session() as session:
        triggered = service.trigger(session, _get(session, key, owner), submit_job)
        console.print(triggered.job_id, highlight=False)


@app.command("history")
def history(
    key: ScheduleKey,
    owner: Owner = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, metavar="N")] = 20,
    as_json: AsJson = False,
) -> None:
    """The schedule's runs, newest slot first, with their job ids."""
    with ledger_session() as session:
        found = service.runs(session, _get(session, key, owner).id, limit=limit)
        rows = [service.run_to_dict(one) for one in found]
        slots = [one.slot for one in found]
    if as_json:
        print_json(rows)
        return
    table = Table("slot", "kind", "state", "job", "detail")
    for row, slot in zip(rows, slots, strict=True):
        table.add_row(when(slot), row["kind"], state(row["state"]), row["job_id"] or "",
                      row["detail"] or "")  # fmt: skip
    console.print(table)


@app.command("delete")
def delete(key: ScheduleKey, owner: Owner = None) -> None:
    """Delete a schedule and its run history."""
    with ledger_session() as session:
        schedule = _get(session, key, owner)
        name, schedule_id = schedule.name, schedule.id
        service.remove(session, schedule)
    console.print(f"deleted {name} ({schedule_id})")
