"""`conveyor up`, `api`, `worker`, `beat` and `db upgrade`."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.panel import Panel

if TYPE_CHECKING:
    from conveyor.local.supervisor import Supervisor

from conveyor.core import api_keys
from conveyor.core.db import session_scope
from conveyor.core.preflight import require_database, require_redis
from conveyor.core.settings import QUEUES, Settings, get_settings

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


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _start_sandbox_gateway(
    supervisor: Supervisor, env: dict[str, str], settings: Settings, python: str
) -> str:
    """Start the sandbox payment gateway (unless Stripe is configured) and point the worker
    and API at it; returns a line for the banner."""
    if settings.payments_gateway != "sandbox":
        return f"{settings.payments_gateway} gateway"
    from conveyor.webhooks.signing import generate_secret

    host, port = settings.sandbox_gateway_host, settings.sandbox_gateway_port
    if "CONVEYOR_SANDBOX_GATEWAY_PORT" not in env and not _port_free(host, port):
        port = _any_free_port(host)  # the default port is taken: any other will do
    env["CONVEYOR_SANDBOX_GATEWAY_PORT"] = str(port)
    url = f"http://{host}:{port}"
    env.setdefault("CONVEYOR_PAYMENTS_GATEWAY_URL", url)
    # One secret for this run, shared by the sandbox (signs) and the API (verifies).
    env.setdefault("CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET", generate_secret())
    env.setdefault(
        "CONVEYOR_SANDBOX_WEBHOOK_URL",
        f"http://{settings.api_host}:{settings.api_port}/api/v1/payments/gateway-events",
    )
    supervisor.start("sandbox-gateway", [python, "-m", "conveyor.workloads.payments.sandbox"])
    return f"{url} (sandbox gateway)"


def _start_mail_sink(
    start: Callable[[str, list[str]], object], env: dict[str, str], python: str
) -> str:
    """Start the local SMTP sink unless CONVEYOR_SMTP_HOST points at a real server; the
    worker sends to it and the API lists what arrived at /api/v1/dev/mailbox."""
    if "CONVEYOR_SMTP_HOST" in env:
        return f"{env['CONVEYOR_SMTP_HOST']}:{env.get('CONVEYOR_SMTP_PORT', '1025')} (SMTP)"
    port = str(get_settings().smtp_port)
    env.update(
        {
            "CONVEYOR_SMTP_HOST": "127.0.0.1",
            "CONVEYOR_SMTP_PORT": port,
            "CONVEYOR_SMTP_USE_TLS": "false",
            "CONVEYOR_SMTP_USE_SSL": "false",
            "CONVEYOR_MAIL_SINK": "true",
        }
    )
    env.pop("CONVEYOR_SMTP_USERNAME", None)
    start(
        "mail-sink",
        [python, "-m", "conveyor.local.mail_sink", "--host", "127.0.0.1", "--port", port],
    )
    return f"127.0.0.1:{port} (mail sink; GET /api/v1/dev/mailbox)"


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
        mail_note = _start_mail_sink(supervisor.start, env, python)
        gateway_note = _start_sandbox_gateway(supervisor, env, settings, python)
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
                f"Mail      {mail_note}\n"
                f"Payments  {gateway_note}\n"
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
