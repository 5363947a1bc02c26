"""A real system for integration tests: Redis, a database, a worker process and the API.

Every test here runs twice, on SQLite and on PostgreSQL. PostgreSQL tests skip with a
reason when no server is reachable (a laptop); CI always has one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from conveyor.core import api_keys, db
from conveyor.core.celery_app import celery_config, get_celery
from conveyor.core.settings import get_settings
from conveyor.core.workloads import queues

REDIS_HOST = os.environ.get("CONVEYOR_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CONVEYOR_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("CONVEYOR_TEST_REDIS_DB", "13"))
# For tests that run a whole system of their own (deployment files, supervisor) while the
# session's stack may still be up: on one database, the stack's workers would take their jobs.
SYSTEM_REDIS_DB = int(os.environ.get("CONVEYOR_TEST_SYSTEM_REDIS_DB", str((REDIS_DB + 1) % 16)))
RABBITMQ_URL = os.environ.get("CONVEYOR_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
PG_ADMIN_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

# Short limits so redelivery after a killed worker happens within seconds, not an hour.
TEST_ENV = {
    "CONVEYOR_TASK_SOFT_TIME_LIMIT": "20",
    "CONVEYOR_TASK_TIME_LIMIT": "25",
    "CONVEYOR_VISIBILITY_TIMEOUT": "30",
    "CONVEYOR_UNACKED_RESTORE_INTERVAL": "1",
    "CONVEYOR_RETRY_BACKOFF_MAX": "5",
    "CONVEYOR_LOG_JSON": "false",
    "CONVEYOR_LOG_LEVEL": "INFO",
    # Tests poll the API quickly with one key; the per-key limit has tests of its own.
    "CONVEYOR_API_RATE_LIMIT_PER_MINUTE": "0",
    # Several tests send bad keys on purpose, all from 127.0.0.1; this limit has its own test.
    "CONVEYOR_API_AUTH_FAILURES_PER_MINUTE": "0",
    # Tasks that exist only for the tests (tests/integration/tasks.py).
    "CONVEYOR_TASK_MODULES": "tests.integration.tasks",
    # A queue of the tests' own, for jobs that must run on a worker of their own.
    "CONVEYOR_QUEUES": "reports",
    # Job figures reach the database within a second (tests/integration/test_job_stats.py).
    "CONVEYOR_STATS_FLUSH_SECONDS": "1",
}

# For a worker started after a kill: Redis hands the dead worker's message back after
# 10 s instead of 30 s (for tests whose tasks all finish well within these limits).
QUICK_REDELIVERY = {
    "CONVEYOR_TASK_SOFT_TIME_LIMIT": "7",
    "CONVEYOR_TASK_TIME_LIMIT": "8",
    "CONVEYOR_VISIBILITY_TIMEOUT": "10",
}

pytestmark = pytest.mark.integration

# The ledgers the tests run on (CONVEYOR_TEST_DATABASES=sqlite runs one). With
# CONVEYOR_TEST_DATABASE_TESTS_ONLY=1 the tests that take no database are left out, so two
# runs (one per database, each with its own CONVEYOR_TEST_REDIS_DB) cover the suite once.
DATABASES = [
    name.strip()
    for name in os.environ.get("CONVEYOR_TEST_DATABASES", "sqlite,postgresql").split(",")
    if name.strip()
]
DATABASE_TESTS_ONLY = os.environ.get("CONVEYOR_TEST_DATABASE_TESTS_ONLY") == "1"


def stack_queues() -> list[str]:
    """Every queue but `scraping`: crawls reach loopback sites, which needs settings of their
    own (tests/integration/test_scraping.py starts the workers for it)."""
    return [name for name in queues(get_settings()) if name != "scraping"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests on the stack run on Redis as broker; `@pytest.mark.both_brokers` ones on
    RabbitMQ too, and `@pytest.mark.rabbitmq` ones on RabbitMQ only."""
    if "stack" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker
        brokers = ["rabbitmq"] if marked("rabbitmq") else ["redis"]
        if marked("both_brokers"):
            brokers = ["redis", "rabbitmq"]
        metafunc.parametrize("broker", brokers, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.one_database`: a slow test whose subject is not the database (a worker
    kill, an object store) runs on PostgreSQL only, to keep the suite short; so does every
    test on RabbitMQ."""
    if DATABASE_TESTS_ONLY:
        elsewhere = [item for item in items if "database_url" not in item.fixturenames]
        if elsewhere:
            config.hook.pytest_deselected(items=elsewhere)
            items[:] = [item for item in items if "database_url" in item.fixturenames]

    def params(item: pytest.Item) -> dict[str, Any]:
        callspec = getattr(item, "callspec", None)
        return callspec.params if callspec is not None else {}

    on_sqlite_and_rabbitmq = [
        item
        for item in items
        if params(item).get("database_url") == "sqlite" and params(item).get("broker") == "rabbitmq"
    ]
    if on_sqlite_and_rabbitmq:
        config.hook.pytest_deselected(items=on_sqlite_and_rabbitmq)
        items[:] = [item for item in items if item not in on_sqlite_and_rabbitmq]
    for item in items:
        on_sqlite = params(item).get("database_url") == "sqlite"
        if item.get_closest_marker("one_database") and on_sqlite:
            item.add_marker(pytest.mark.skip(reason="one database is enough; runs on PostgreSQL"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _redis_reachable() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


@pytest.fixture(scope="session")
def system_redis_url(redis_url: str) -> str:
    """A Redis database apart from the stack's, which the test may flush."""
    assert SYSTEM_REDIS_DB != REDIS_DB, "CONVEYOR_TEST_SYSTEM_REDIS_DB must differ"
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{SYSTEM_REDIS_DB}"


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test or session, dropped afterwards; the
    test skips with the reason when no server answers."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}".splitlines()[0])
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session", params=DATABASES)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'conveyor.db'}"
        return
    with fresh_postgres_database("conveyor_test") as url:
        try:
            yield url
        finally:
            db.dispose_all()


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait()

    def kill_hard(self) -> None:
        """SIGKILL to the main process and every pool child: a machine losing power."""
        assert self.process is not None
        self.signal_group(signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    worker: Process
    api: Process
    admin_key: str
    tmp: Path
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=30)

    def start_worker(self) -> Process:
        node = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.worker = Process(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker",
                "-Q", ",".join(stack_queues()), "-c", "2", "-n", node,
                "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            ],
            self.env,
            self.tmp / "worker.log",
        )  # fmt: skip
        self.worker.start()
        wait_for(self.worker_answers, 30, "the worker to answer a ping", interval=0.2)
        return self.worker

    @contextmanager
    def quick_redelivery_worker(self) -> Iterator[Process]:
        """A new worker that gets a killed worker's messages back after 10 s (see
        QUICK_REDELIVERY); the usual worker again afterwards."""
        usual = self.env
        self.env = {**usual, **QUICK_REDELIVERY}
        try:
            yield self.start_worker()
        finally:
            self.env = usual
            self.worker.stop()
            self.start_worker()

    def worker_answers(self) -> bool:
        # limit=1: done at the first reply, instead of always waiting out the timeout.
        return bool(get_celery().control.ping(timeout=0.5, limit=1))

    def key_for(self, owner: str) -> str:
        if owner not in self.keys:
            with db.session_scope() as session:
                self.keys[owner] = api_keys.create_key(session, owner, owner=owner).plaintext
        return self.keys[owner]

    def wait_job(self, job_id: str, states: set[str], timeout: float = 40) -> dict[str, Any]:
        with self.client() as client:

            def reached() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
                return body if body.get("state") in states else None

            try:
                result: dict[str, Any] = wait_for(reached, timeout, f"job {job_id} in {states}")
            except AssertionError:
                print(self.worker.log_tail())
                raise
            return result


def api_process(name: str, env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    """A uvicorn process serving the API on a free port; returns it and its base URL."""
    port = free_port()
    api = Process(
        name,
        [
            sys.executable, "-m", "uvicorn", "--factory", "conveyor.api.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        ],
        env,
        log_dir / f"{name}-{port}.log",
    )  # fmt: skip
    return api, f"http://127.0.0.1:{port}"


def api_answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def extra_api(stack: Stack, name: str, **overrides: str) -> Iterator[str]:
    """Another API process on the stack's database and Redis, with some settings changed."""
    api, base_url = api_process(name, {**stack.env, **overrides}, stack.tmp)
    api.start()
    try:
        wait_for(lambda: api_answers(base_url), 30, f"the {name} API process to start")
        yield base_url
    finally:
        api.stop()


def _apply_env(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith("CONVEYOR_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    get_settings.cache_clear()
    app = get_celery()
    if getattr(app, "configured", False):
        # A stack on another broker: this process's app reads its configuration only once.
        app.conf.update(celery_config(get_settings()))
        app._pool = None
        app.__dict__.pop("amqp", None)  # its queues and producers, built again on use


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The stack's broker URL: None for the Redis URL, else a RabbitMQ virtual host of the
    run's own, created empty and deleted afterwards."""
    if request.param == "redis":
        yield None
        return
    host = RABBITMQ_URL.rsplit("@", 1)[-1].split("/")[0]
    address, _, port = host.partition(":")
    try:
        socket.create_connection((address, int(port or 5672)), timeout=3).close()
    except OSError as exc:
        pytest.skip(f"RabbitMQ not reachable at {host}: {exc}")
    vhost = f"conveyor-test-{REDIS_DB}"
    rabbitmqctl("delete_vhost", vhost)  # what an interrupted run left
    created = rabbitmqctl("add_vhost", vhost)
    if created.returncode != 0:
        pytest.skip(f"cannot create a RabbitMQ virtual host: {created.stderr.strip()[:200]}")
    user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0]
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield f"{RABBITMQ_URL.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def stack(
    database_url: str,
    redis_url: str,
    broker: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONVEYOR_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(TEST_ENV)
    env.update(
        {
            "CONVEYOR_DATA_DIR": str(tmp / "data"),
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_REDIS_URL": redis_url,
        }
    )
    if broker is not None:
        env["CONVEYOR_BROKER_URL"] = broker
    _apply_env(env)
    redis.Redis.from_url(redis_url).flushdb()

    from conveyor.core.migrate import upgrade

    upgrade(get_settings())
    with db.session_scope() as session:
        admin_key = api_keys.create_key(session, "ops", owner="ops", admin=True).plaintext

    api, api_url = api_process("api", env, tmp)
    api.start()
    placeholder = Process("worker", [], env, tmp / "worker.log")
    built = Stack(
        env=env, api_url=api_url, worker=placeholder, api=api, admin_key=admin_key, tmp=tmp
    )
    try:
        built.start_worker()  # while the API boots too
        wait_for(lambda: api_answers(api_url), 30, "the API to start")
        yield built
    finally:
        built.worker.stop()
        built.api.stop()  # a test may have restarted it with other settings
        db.dispose_all()
        redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def submit_diagnostics(client: httpx.Client, **body: Any) -> str:
    response = client.post("/api/v1/diagnostics/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def dead_letter_of(stack: Stack, client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Wait until the job is dead, then return its dead letter."""
    stack.wait_job(job_id, {"dead"})
    letters: list[dict[str, Any]] = client.get(
        "/api/v1/dead-letters", params={"limit": 200}
    ).json()["items"]
    return next(item for item in letters if item["job_id"] == job_id)
