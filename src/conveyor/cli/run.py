"""`conveyor up`, `api`, `worker`, `beat` and `db upgrade`."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from conveyor.core import api_keys
from conveyor.core.db import session_scope
from conveyor.core.preflight import require_database, require_redis
from conveyor.core.settings import QUEUES, get_settings

console = Console(stderr=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def _reload_settings() -> None:
    get_settings.cache_clear()


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


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (Alembic) up to REVISION."""
    from conveyor.core.migrate import upgrade

    upgrade(get_settings(), revision)
    console.print(f"[green]database at {revision}[/green]")


def api(
    host: Annotated[str | None, typer.Option(help="Default: CONVEYOR_API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CONVEYOR_API_PORT.")] = None,
    workers: Annotated[int, typer.Option(help="API processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    settings = get_settings()
    require_database(settings)
    require_redis(settings)
    bootstrap_key()
    uvicorn.run(
        "conveyor.api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        proxy_headers=True,
        log_config=None,
    )


def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")
    ] = ",".join(QUEUES),
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
) -> None:
    """Run a Celery worker (same as `celery -A conveyor.worker worker`)."""
    require_redis()
    require_database()
    from conveyor.worker import app

    argv = ["worker", "-Q", queues, "--loglevel", loglevel]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    app.worker_main(argv)


def beat(loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO") -> None:
    """Run Celery Beat, the scheduler of periodic tasks."""
    require_redis()
    from conveyor.worker import app

    app.start(["beat", "--loglevel", loglevel])


def up(
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
) -> None:
    """Start everything here: Redis (if none configured), migrations, API, worker, Beat."""
    from conveyor.core.metrics_setup import prepare_multiprocess_dir
    from conveyor.local.embedded_redis import start_embedded_redis
    from conveyor.local.supervisor import Supervisor

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One metrics directory for the API and every worker process, fresh for this run.
    prepare_multiprocess_dir(wipe=True)
    env = dict(os.environ)
    env.setdefault("CONVEYOR_LOG_JSON", "false")
    supervisor = Supervisor(env=env)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)

    redis_note = settings.redis
    if settings.redis_url is None:
        embedded = start_embedded_redis(settings.data_dir)
        supervisor.on_stop.append(embedded.stop)
        env["CONVEYOR_REDIS_URL"] = embedded.url
        os.environ["CONVEYOR_REDIS_URL"] = embedded.url
        _reload_settings()
        redis_note = f"{embedded.url} (embedded, data in {settings.data_dir / 'redis'})"
    try:
        settings = get_settings()
        require_redis(settings)
        run_migrations()
        require_database(settings)
        bootstrap_key()

        python = sys.executable
        worker_argv = [python, "-m", "celery", "-A", "conveyor.worker", "worker"]
        worker_argv += ["-Q", ",".join(QUEUES), "--loglevel", "INFO"]
        if concurrency:
            worker_argv += ["--concurrency", str(concurrency)]
        supervisor.start("worker", worker_argv)
        supervisor.start(
            "beat", [python, "-m", "celery", "-A", "conveyor.worker", "beat", "--loglevel", "INFO"]
        )
        supervisor.start(
            "api",
            [
                python, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
                "--host", settings.api_host, "--port", str(settings.api_port),
            ],
        )  # fmt: skip
        base = f"http://{settings.api_host}:{settings.api_port}"
        console.print(
            Panel.fit(
                f"API       {base}\n"
                f"Docs      {base}/docs\n"
                f"Ready     {base}/health/ready\n"
                f"Metrics   {base}/metrics\n"
                f"Redis     {redis_note}\n"
                f"Database  {settings.database}\n"
                f"Queues    {', '.join(QUEUES)}\n\n"
                "Ctrl-C stops everything.",
                title="Conveyor is up",
            )
        )
        exited = supervisor.wait()
        if exited is not None and exited.process is not None:
            console.print(
                f"[red]{exited.name} exited with code {exited.process.returncode}; "
                "stopping everything[/red]"
            )
            raise typer.Exit(1)
    finally:
        console.print("stopping…")
        supervisor.stop()
        console.print("[green]stopped[/green]")
