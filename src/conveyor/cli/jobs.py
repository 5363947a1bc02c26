"""`conveyor jobs`: list, show, cancel and watch jobs in the ledger."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.cli.render import AsJson, make_console, print_json, progress, state, when
from conveyor.cli.system import ledger_session, require_broker
from conveyor.core import jobs, ledger
from conveyor.core.models import TERMINAL_STATES, Job, JobState

app = typer.Typer(help="Jobs in the ledger.", no_args_is_help=True)
console = make_console()
JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The job's id.")]


@app.command("list")
def list_jobs(
    state_filter: Annotated[
        JobState | None, typer.Option("--state", help="Only jobs in this state.")
    ] = None,
    queue: Annotated[str | None, typer.Option(metavar="QUEUE", help="Only this queue.")] = None,
    owner: Annotated[
        str | None, typer.Option(metavar="OWNER", help="Only this owner's jobs.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="How many to show.")
    ] = 20,
    as_json: AsJson = False,
) -> None:
    """Newest jobs first."""
    with ledger_session() as session:
        rows, _ = ledger.list_jobs(
            session, owner=owner, state=state_filter, queue=queue, limit=limit
        )
    if as_json:
        print_json([_job_json(job) for job in rows])
        return
    table = Table("id", "name", "queue", "state", "progress", "attempts", "created", "finished")
    for job in rows:
        table.add_row(
            job.id,
            job.name,
            job.queue,
            state(job.state),
            progress(job.progress_current, job.progress_total),
            str(job.attempts),
            when(job.created_at),
            when(job.finished_at),
        )
    console.print(table)


def _job_json(job: Job) -> dict[str, object]:
    """A row of `jobs list` as JSON: the table's columns, nothing of args or results."""
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "state": job.state,
        "progress": {"current": job.progress_current, "total": job.progress_total},
        "attempts": job.attempts,
        "created_at": ledger.iso(job.created_at),
        "finished_at": ledger.iso(job.finished_at),
    }


def _load(job_id: str) -> dict[str, object]:
    with ledger_session() as session:
        job = ledger.get_job(session, job_id)
        if job is None:
            console.print(f"[red]no job {job_id}[/red]")
            raise typer.Exit(1)
        return ledger.job_to_dict(job)


@app.command("show")
def show(job_id: JobId) -> None:
    """Everything the ledger knows about a job, as JSON."""
    console.print_json(json.dumps(_load(job_id), default=str))


@app.command("cancel")
def cancel(job_id: JobId) -> None:
    """Cancel a queued or running job."""
    require_broker()
    with ledger_session() as session:
        job = ledger.get_job(session, job_id)
        if job is None:
            console.print(f"[red]no job {job_id}[/red]")
            raise typer.Exit(1)
        if not jobs.cancel(session, job):
            console.print(f"[yellow]job already finished: {job.state}[/yellow]")
            raise typer.Exit(1)
    console.print(f"cancelled {job_id}")


@app.command("watch")
def watch(
    job_id: JobId,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between looks.")
    ] = 0.5,
) -> None:
    """A live progress bar until the job finishes; exits non-zero unless it succeeded."""
    snapshot = _load(job_id)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(str(snapshot["name"]), total=None, message="")
        while True:
            progress_info = snapshot["progress"]
            assert isinstance(progress_info, dict)
            bar.update(
                task,
                completed=progress_info["current"] or 0,
                total=progress_info["total"],
                message=f"{snapshot['state']} {progress_info['message'] or ''}".strip(),
            )
            if snapshot["state"] in TERMINAL_STATES:
                break
            time.sleep(interval)
            snapshot = _load(job_id)
    final = snapshot["state"]
    console.print(f"{job_id}: {state(str(final))}")
    if final != JobState.SUCCEEDED:
        error = snapshot.get("error")
        if isinstance(error, dict):
            console.print(f"[red]{error['type']}: {error['message']}[/red]")
        raise typer.Exit(1)
