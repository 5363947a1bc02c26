"""`conveyor api`, `worker` and `beat`; `conveyor db` is in database.py."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from conveyor.cli import database
from conveyor.core import api_keys, workloads
from conveyor.core.db import session_scope
from conveyor.core.preflight import require_database, require_redis, require_task_modules
from conveyor.core.settings import SettingsError, get_settings

console = Console(stderr=True)
# `conveyor worker -c` and `conveyor up -c`.
Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        "-c",
        min=1,
        help="Worker processes. Default: CONVEYOR_WORKER_CONCURRENCY, else one per CPU.",
    ),
]
db_app = database.app


def run_migrations() -> None:
    from conveyor.core.migrate import upgrade

    upgrade(get_settings())


def bootstrap_key() -> None:
    """Create CONVEYOR_BOOTSTRAP_API_KEY as an admin key if it does not exist yet."""
    secret = get_settings().bootstrap_api_key
    if secret is None:
        return
    with session_scope() as session:
        created = api_keys.ensure_key(session, secret.get_secret_value())
    if created:
        console.print("[green]created the admin key from CONVEYOR_BOOTSTRAP_API_KEY[/green]")


STREAMS_CLOSED_AFTER_SECONDS = 3


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """Tells the event streams to end as soon as a shutdown is asked for."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            from conveyor.api import shutdown

            shutdown.begin()
            super().handle_exit(sig, frame)

    return Server


def api(
    host: Annotated[str | None, typer.Option(help="Default: CONVEYOR_API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CONVEYOR_API_PORT.")] = None,
    workers: Annotated[int, typer.Option(help="API processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from conveyor.local.ports import choose_port

    settings = get_settings()
    require_database(settings)
    require_redis(settings)
    host = host or settings.api_host
    setting = "--port" if port else "CONVEYOR_API_PORT"
    port = choose_port(setting, host, port or settings.api_port, pinned=True)
    bootstrap_key()
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "proxy_headers": True,
        "log_config": None,
        # Event streams (a dashboard tab, `jobs/{id}/events`) never end by themselves: on
        # Ctrl-C or SIGTERM a stream still open after this is cut, never holding the shutdown.
        "timeout_graceful_shutdown": STREAMS_CLOSED_AFTER_SECONDS,
    }
    if workers > 1:
        uvicorn.run("conveyor.api.app:create_app", **options)
    else:
        # One process: its streams end by themselves first (see _server_class).
        _server_class()(uvicorn.Config("conveyor.api.app:create_app", **options)).run()


def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues", "-Q", help="Comma-separated queues to consume (default: every queue)."
        ),
    ] = None,
    concurrency: Concurrency = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
) -> None:
    """Run a Celery worker (same as `celery -A conveyor.worker worker`)."""
    declared = workloads.queues(get_settings())
    chosen = [name.strip() for name in (queues or ",".join(declared)).split(",") if name.strip()]
    unknown = [name for name in chosen if name not in declared]
    if unknown:
        raise SettingsError(
            f"--queues: {', '.join(unknown)} not declared (declared: {', '.join(declared)}); "
            "declare your own in CONVEYOR_QUEUES"
        )
    require_redis()
    require_database()
    require_task_modules()
    from conveyor.worker import app

    argv = ["worker", "-Q", ",".join(chosen), "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    app.worker_main(argv)


def beat(
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
) -> None:
    """Run Celery Beat, the scheduler of periodic tasks."""
    require_redis()
    from conveyor.worker import app

    app.start(["beat", "--loglevel", loglevel])
