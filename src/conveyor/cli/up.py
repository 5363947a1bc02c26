"""`conveyor up`: the whole system on one machine, found by every other command through the
runtime file it writes once every part listens."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from conveyor.cli.run import Concurrency, bootstrap_key, run_migrations
from conveyor.core import workloads
from conveyor.core.preflight import require_database, require_redis, require_task_modules
from conveyor.core.redaction import safe_url
from conveyor.core.runtime import AlreadyRunning, Runtime, UpLock
from conveyor.core.settings import Settings, SettingsError, get_settings, section
from conveyor.core.settings_docs import unknown_variables
from conveyor.local.mail_sink import require_aiosmtpd
from conveyor.local.ports import choose_port, listening
from conveyor.local.supervisor import Supervisor
from conveyor.workloads.email.settings import EmailSettings
from conveyor.workloads.payments.settings import SANDBOX_URL, PaymentsSettings
from conveyor.workloads.scraping.settings import ScrapingSettings

console = Console(stderr=True)
# A cold worker on a busy machine takes several seconds to answer its first ping.
START_TIMEOUT = 120.0


class StartupFailed(Exception):
    """A part did not come up; the message says which and where its output is."""


@dataclass
class Plan:
    """Every port, chosen before anything starts, so a conflict stops nothing half-way."""

    api_port: int
    sink_port: int | None
    gateway_port: int | None
    demo_port: int | None = None
    notes: list[str] = field(default_factory=list)


def plan_ports(settings: Settings) -> Plan:
    email, payments = section(EmailSettings), section(PaymentsSettings)
    pinned = settings.model_fields_set | email.model_fields_set | payments.model_fields_set
    scraping = section(ScrapingSettings)
    pinned |= scraping.model_fields_set

    def pick(setting: str, host: str, port: int) -> int:
        chosen = choose_port(f"CONVEYOR_{setting.upper()}", host, port, pinned=setting in pinned)
        if chosen != port:
            plan.notes.append(f"port {port} was taken: CONVEYOR_{setting.upper()} → {chosen}")
        return chosen

    plan = Plan(api_port=settings.api_port, sink_port=None, gateway_port=None)
    plan.notes += unknown_variables(os.environ)
    plan.api_port = pick("api_port", settings.api_host, settings.api_port)
    # The mail sink and the sandbox gateway serve their workloads only.
    enabled = {workload.name for workload in workloads.enabled(settings)}
    if "email" in enabled and "smtp_host" not in pinned:
        require_aiosmtpd()
        plan.sink_port = pick("smtp_port", "127.0.0.1", email.smtp_port)
    if "payments" in enabled and payments.payments_gateway == "sandbox":
        plan.gateway_port = pick(
            "sandbox_gateway_port", payments.sandbox_gateway_host, payments.sandbox_gateway_port
        )
    if "scraping" in enabled:
        plan.demo_port = pick("scrape_demo_port", "127.0.0.1", scraping.scrape_demo_port)
    if settings.worker_metrics_port:
        choose_port(
            # The worker serves its metrics on every interface (prometheus_client default).
            "CONVEYOR_WORKER_METRICS_PORT",
            "0.0.0.0",  # noqa: S104
            settings.worker_metrics_port,
            pinned=True,
        )
    return plan


def up(concurrency: Concurrency = None) -> None:
    """Start everything here: Redis (if none configured), migrations, API, worker, Beat and
    the scheduler."""
    settings = get_settings()
    try:
        lock = UpLock.acquire(settings.data_dir)
    except AlreadyRunning as exc:
        console.print(
            f"[red]conveyor: already running here ({exc}); stop that one first "
            "(Ctrl-C in its terminal), or start another from a different directory[/red]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    try:
        # Settings again: a runtime file from a crashed run was just removed.
        get_settings.cache_clear()
        _run(get_settings(), lock, concurrency)
    except StartupFailed as exc:
        console.print(f"[red]conveyor: {escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        lock.release()


def _pin(env: dict[str, str], name: str, value: str) -> None:
    """Set for the children and for this process, so both talk to the same system."""
    env[name] = value
    os.environ[name] = value
    get_settings.cache_clear()


def _run(settings: Settings, lock: UpLock, concurrency: int | None) -> None:
    from conveyor.core.metrics_setup import prepare_multiprocess_dir

    data_dir = settings.data_dir.resolve()
    require_task_modules(settings)
    plan = plan_ports(settings)
    # One metrics directory for the API and every worker process, fresh for this run.
    prepare_multiprocess_dir(wipe=True)
    env = dict(os.environ)
    env.setdefault("CONVEYOR_LOG_JSON", "false")
    supervisor = Supervisor(env=env)
    # The terminal closing (SIGHUP) stops everything too, as Ctrl-C does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.request_stop)
    try:
        _pin(env, "CONVEYOR_DATA_DIR", str(data_dir))
        redis_note = _redis(supervisor, env, settings, data_dir)
        settings = get_settings()
        require_redis(settings)
        if settings.database_url is None:
            _pin(env, "CONVEYOR_DATABASE_URL", f"sqlite:///{(data_dir / 'conveyor.db').as_posix()}")
            settings = get_settings()
        require_database(settings)
        run_migrations()
        bootstrap_key()
        _pin(env, "CONVEYOR_API_PORT", str(plan.api_port))
        checks = _start_parts(supervisor, env, settings, plan, concurrency)
        _wait_until_up(supervisor, checks)
        if supervisor.stopping:
            return
        runtime = _runtime(settings, plan)
        lock.publish(runtime)
        _banner(settings, runtime, plan, redis_note)
        exited = supervisor.wait()
        if exited is not None and exited.process is not None:
            raise StartupFailed(
                f"{exited.name} exited with code {exited.process.returncode} (its output is "
                "above); stopping everything"
            )
    finally:
        if supervisor.children or supervisor.on_stop:
            console.print("stopping…")
            supervisor.stop()
            console.print("[green]stopped[/green]")


def _redis(supervisor: Supervisor, env: dict[str, str], settings: Settings, data_dir: Path) -> str:
    if settings.redis_url is not None:
        return f"{safe_url(settings.redis_url)} ({settings.source_of('redis_url')})"
    from conveyor.local.embedded_redis import start_embedded_redis

    try:
        embedded = start_embedded_redis(data_dir)
    except RuntimeError as exc:
        raise SettingsError(str(exc)) from None
    supervisor.on_stop.append(embedded.stop)
    _pin(env, "CONVEYOR_REDIS_URL", embedded.url)
    return f"{embedded.url} (embedded, data in {data_dir / 'redis'})"


def _start_parts(
    supervisor: Supervisor,
    env: dict[str, str],
    settings: Settings,
    plan: Plan,
    concurrency: int | None,
) -> list[tuple[str, Callable[[], bool]]]:
    """Start every process; returns, per part, how to tell that it is up."""
    python = sys.executable
    checks: list[tuple[str, Callable[[], bool]]] = []
    if plan.sink_port is not None:
        port = plan.sink_port
        env.update(
            {
                "CONVEYOR_SMTP_HOST": "127.0.0.1",
                "CONVEYOR_SMTP_PORT": str(port),
                "CONVEYOR_SMTP_USE_TLS": "false",
                "CONVEYOR_SMTP_USE_SSL": "false",
                "CONVEYOR_MAIL_SINK": "true",
            }
        )
        env.pop("CONVEYOR_SMTP_USERNAME", None)
        supervisor.start(
            "mail sink",
            [python, "-m", "conveyor.local.mail_sink", "--host", "127.0.0.1", "--port", str(port)],
        )
        checks.append(("mail sink", lambda: listening("127.0.0.1", port)))
    if plan.gateway_port is not None:
        from conveyor.webhooks.signing import generate_secret

        host, gateway = section(PaymentsSettings).sandbox_gateway_host, plan.gateway_port
        env["CONVEYOR_SANDBOX_GATEWAY_PORT"] = str(gateway)
        env.setdefault("CONVEYOR_PAYMENTS_GATEWAY_URL", f"http://{host}:{gateway}")
        # One secret for this run, shared by the sandbox (signs) and the API (verifies).
        env.setdefault("CONVEYOR_PAYMENTS_GATEWAY_WEBHOOK_SECRET", generate_secret())
        env.setdefault(
            "CONVEYOR_SANDBOX_WEBHOOK_URL",
            f"http://{_client_host(settings.api_host)}:{plan.api_port}"
            "/api/v1/payments/gateway-events",
        )
        supervisor.start("sandbox gateway", [python, "-m", "conveyor.workloads.payments.sandbox"])
        checks.append(("sandbox gateway", lambda: listening(host, gateway)))

    if plan.demo_port is not None:
        demo = plan.demo_port
        supervisor.start(
            "demo site",
            [python, "-m", "conveyor.workloads.scraping.demo_site", "--port", str(demo)],
        )
        checks.append(("demo site", lambda: listening("127.0.0.1", demo)))

    worker_argv = [python, "-m", "celery", "-A", "conveyor.worker", "worker"]
    worker_argv += ["-Q", ",".join(workloads.queues(settings)), "--loglevel", "INFO"]
    if concurrency:
        worker_argv += ["--concurrency", str(concurrency)]
    supervisor.start("worker", worker_argv)
    checks.append(("worker", _worker_answers(settings.broker)))
    supervisor.start(
        "beat", [python, "-m", "celery", "-A", "conveyor.worker", "beat", "--loglevel", "INFO"]
    )
    # Schedules as data; any number may run, so a second `up` or a scheduler elsewhere is safe.
    supervisor.start("scheduler", [python, "-m", "conveyor.core.schedules.scheduler"])
    supervisor.start(
        "api",
        [
            python, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
            "--host", settings.api_host, "--port", str(plan.api_port),
        ],
    )  # fmt: skip
    checks.append(("api", _api_answers(_api_url(settings, plan))))
    return checks


def _client_host(host: str) -> str:
    # A server bound to every interface is reached through loopback from here.
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104


def _api_url(settings: Settings, plan: Plan) -> str:
    return f"http://{_client_host(settings.api_host)}:{plan.api_port}"


def _api_answers(base: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{base}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _worker_answers(broker: str) -> Callable[[], bool]:
    from celery import Celery

    # A bare app, not Conveyor's: pinging needs no tasks, and this process needs none loaded.
    probe = Celery("conveyor-up", broker=broker, set_as_current=False)

    def check() -> bool:
        return bool(probe.control.ping(timeout=0.5))

    return check


def _wait_until_up(supervisor: Supervisor, checks: list[tuple[str, Callable[[], bool]]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(checks)
    while pending and not supervisor.stopping:
        exited = supervisor.first_exited()
        if exited is not None and exited.process is not None:
            raise StartupFailed(
                f"{exited.name} exited during start-up with code {exited.process.returncode} "
                "(its output is above); stopping everything"
            )
        pending = [(name, check) for name, check in pending if not check()]
        if pending and time.monotonic() > deadline:
            names = ", ".join(name for name, _ in pending)
            raise StartupFailed(
                f"{names} did not come up within {START_TIMEOUT:g}s (output above); "
                "stopping everything"
            )
        if pending:
            time.sleep(0.2)


def _runtime(settings: Settings, plan: Plan) -> Runtime:
    email, payments = section(EmailSettings), section(PaymentsSettings)
    return Runtime(
        pid=os.getpid(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_dir=str(settings.data_dir.resolve()),
        redis_url=settings.redis,
        database_url=settings.database,
        api_url=_api_url(settings, plan),
        smtp=f"{email.smtp_host}:{plan.sink_port or email.smtp_port}",
        urls=(
            {SANDBOX_URL: f"http://{payments.sandbox_gateway_host}:{plan.gateway_port}"}
            if plan.gateway_port
            else {}
        ),
    )


def _demo_line(settings: Settings, port: int) -> str:
    url = f"http://127.0.0.1:{port}/"
    if settings.allow_private_networks:
        return f"{url} (to crawl; docs/scraping.md)"
    return f"{url} (crawling it needs CONVEYOR_ALLOW_PRIVATE_NETWORKS=true)"


def _banner(settings: Settings, runtime: Runtime, plan: Plan, redis_note: str) -> None:
    base = runtime.api_url
    enabled = [workload.name for workload in workloads.enabled(settings)]
    mail = (
        f"{runtime.smtp} (mail sink; GET /api/v1/dev/mailbox)"
        if plan.sink_port
        else f"{runtime.smtp} (SMTP)"
    )
    payments = (
        f"{runtime.urls[SANDBOX_URL]} (sandbox gateway)"
        if SANDBOX_URL in runtime.urls
        else f"{section(PaymentsSettings).payments_gateway} gateway"
    )
    lines = [
        f"API       {base}",
        f"Docs      {base}/docs",
        f"Dashboard {base}/dashboard/",
        "          sign in with a key from: conveyor keys create NAME --admin",
        f"Ready     {base}/health/ready",
        f"Metrics   {base}/metrics",
        f"Redis     {redis_note}",
        *([f"Broker    {safe_url(settings.broker)}"] if settings.broker != settings.redis else []),
        *([f"Mail      {mail}"] if "email" in enabled else []),
        *([f"Payments  {payments}"] if "payments" in enabled else []),
        *([f"Demo shop {_demo_line(settings, plan.demo_port)}"] if plan.demo_port else []),
        f"Database  {safe_url(settings.database)}",
        f"Workloads {', '.join(enabled) or 'none'}",
        *(
            f"Off       {name}: {escape(why)}"
            for name, why in workloads.not_enabled(settings).items()
        ),
        f"Queues    {', '.join(workloads.queues(settings))}",
        *(f"Note      {note}" for note in plan.notes),
        "",
        f"Found by `conveyor` and your code run from {Path.cwd()},",
        f"or from anywhere with CONVEYOR_DATA_DIR={runtime.data_dir}",
        "Ctrl-C stops everything.",
    ]
    console.print(Panel.fit("\n".join(lines), title="Conveyor is up"), highlight=False)
