"""The hot ledger statements as plain SQL on psycopg: the same rows as through SQLAlchemy
Core, and a dropped connection handled the same way."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from conveyor.core import db, driver_sql, ledger, outcome_listeners
from conveyor.core.models import Base, Job, WebhookEndpoint
from conveyor.core.progress import Progress
from conveyor.webhooks.listener import has_endpoints
from tests.integration.conftest import PG_ADMIN_URL, fresh_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> Iterator[Engine]:
    with fresh_postgres_database("conveyor_driver_sql") as url:
        built = db.build_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        Base.metadata.create_all(built)
        try:
            yield built
        finally:
            built.dispose()


@pytest.fixture
def webhooks_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the webhooks listener, as in a worker: it wants owners with an endpoint."""

    def listener(job: dict[str, Any], session: Any) -> None:
        pass

    monkeypatch.setattr(outcome_listeners, "_listeners", [listener])
    monkeypatch.setattr(outcome_listeners, "_wanted", {listener: has_endpoints})


def _endpoint(engine: Engine, owner: str) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            WebhookEndpoint(
                id=uuid.uuid4().hex, owner=owner, url="https://example.com/hook", secret="s"
            )
        )


def _new(engine: Engine, owner: str | None = None) -> str:
    job_id = str(uuid.uuid4())
    with engine.begin() as connection:
        ledger.insert_job(
            connection,
            ledger.NewJob(
                id=job_id,
                name="t",
                queue="q",
                owner=owner,
                args=(1, "ü", None),
                kwargs={"to": ["a@example.com"], "n": 2.5},
                tags=("x", "y"),
            ),
        )
    return job_id


def _through_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on any other driver: the Core statement."""
    real = driver_sql.DriverStatement.first

    def core(self: driver_sql.DriverStatement, connection: Any, values: Any) -> Any:
        row = connection.execute(self.statement, dict(values)).mappings().first()
        return dict(row) if row is not None else None

    def core_execute(self: driver_sql.DriverStatement, connection: Any, values: Any) -> None:
        connection.execute(self.statement, dict(values))

    monkeypatch.setattr(driver_sql.DriverStatement, "first", core)
    monkeypatch.setattr(driver_sql.DriverStatement, "execute", core_execute)
    assert real is not core


def _lifecycle(engine: Engine, result: Any, owner: str | None) -> list[Any]:
    job_id = _new(engine, owner)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        started = ledger.start_attempt(connection, job_id, worker_host="host-a")
        again = ledger.start_attempt(connection, job_id, worker_host="host-b")
        finished = ledger.finish_success(connection, job_id, result)
        late = ledger.finish_success(connection, job_id, "late")
    with Session(engine) as session:
        stored = session.scalars(select(Job).where(Job.id == job_id)).one()
        kept = (stored.state, stored.result, stored.attempts, stored.events_pending, stored.payload)
        assert (stored.args, stored.kwargs) == ([1, "ü", None], {"to": ["a@example.com"], "n": 2.5})
    assert started is not None
    assert again is not None
    assert finished is not None
    assert late is None  # finished already: the statement matches nothing
    rows = [started, again, finished]
    moving = ("id", "created_at", "started_at", "finished_at", "updated_at")
    return [{k: v for k, v in row.items() if k not in moving} for row in rows] + [kept]


@pytest.mark.parametrize("result", [None, {"rows": 3, "name": "ü"}, [1, "two"], "text", 7])
@pytest.mark.parametrize("owner", [None, "alice", "bob"])
def test_driver_rows_are_the_rows_core_returns(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    webhooks_listen: None,
    result: Any,
    owner: str | None,
) -> None:
    _endpoint(engine, "alice")  # bob has none: nobody listens for his jobs
    on_driver = _lifecycle(engine, result, owner)
    _through_core(monkeypatch)
    on_core = _lifecycle(engine, result, owner)
    assert on_driver == on_core
    assert on_driver[-1] == ("succeeded", result, 2, owner == "alice", None)


def test_a_dropped_connection_is_invalidated_and_the_write_retried(engine: Engine) -> None:
    job_id = _new(engine)
    with engine.connect() as connection:
        backend = connection.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (backend,))

    attempts: list[bool] = []

    def start() -> dict[str, Any] | None:
        with engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return ledger.start_attempt(autocommit, job_id, worker_host="h")
            except OperationalError as exc:
                attempts.append(exc.connection_invalidated)
                raise

    row = db.retry_on_disconnect(start)
    assert row is not None
    assert row["attempts"] == 1
    # Used moments ago, the connection was handed out without a ping (db.py): the driver
    # found it dead, and the error said it was invalidated, so the retry took a new one.
    assert attempts == [True]


def _progress(engine: Engine) -> list[Any]:
    job_id = _new(engine)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        early = ledger.record_progress(connection, job_id, 1, 10, "not started yet")
        ledger.start_attempt(connection, job_id, worker_host="h")
        rows = [
            ledger.record_progress(connection, job_id, 3, 10, "m" * 900),
            ledger.record_progress(connection, job_id, 4, None, ""),
        ]
    assert early is None  # only a started job reports progress
    return _columns(rows, "progress_current", "progress_total", "progress_message")


def _columns(rows: list[dict[str, Any] | None], *columns: str) -> list[tuple[Any, ...]]:
    return [tuple(row[column] for column in columns) for row in rows if row]


def test_progress_rows_are_the_rows_core_returns(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_driver = _progress(engine)
    _through_core(monkeypatch)
    assert on_driver == _progress(engine) == [(3, 10, "m" * 500), (4, None, None)]


def _ending_with_progress(engine: Engine) -> list[Any]:
    carried, kept = _new(engine), _new(engine)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        for job_id in (carried, kept):
            ledger.start_attempt(connection, job_id, worker_host="h")
            ledger.record_progress(connection, job_id, 1, 4, "written")
        rows = [
            ledger.finish_success(connection, carried, 1, Progress(4, None, "ü" * 600)),
            ledger.finish_success(connection, kept, 1),
        ]
    return _columns(rows, "state", "progress_current", "progress_total", "progress_message")


def test_an_ending_writes_the_progress_it_carries_and_keeps_the_written_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_driver = _ending_with_progress(engine)
    _through_core(monkeypatch)
    assert on_driver == _ending_with_progress(engine)
    assert on_driver == [("succeeded", 4, None, "ü" * 500), ("succeeded", 1, 4, "written")]


def test_statements_run_in_the_ledger_schema(webhooks_listen: None) -> None:
    """CONVEYOR_DATABASE_SCHEMA: the plain SQL names the engine's schema, as Core would; a
    same-named table in the default schema is left untouched, and the endpoints looked for
    are the schema's too."""
    with fresh_postgres_database("conveyor_driver_schema") as url:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("CREATE SCHEMA tenant")
        built = db.build_engine(
            url.replace("postgresql://", "postgresql+psycopg://"), schema="tenant"
        )
        plain = db.build_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            Base.metadata.create_all(built)
            Base.metadata.create_all(plain)  # a decoy in public
            job_id = _new(built, owner="alice")
            _endpoint(built, "alice")
            _endpoint(plain, "bob")
            with psycopg.connect(url, autocommit=True) as check:
                check.execute("INSERT INTO public.conveyor_jobs SELECT * FROM tenant.conveyor_jobs")
            with built.connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                assert ledger.start_attempt(connection, job_id, worker_host="h") is not None
                ended = ledger.finish_success(connection, job_id, 5)
            assert ended is not None
            assert ended["events_pending"] is True  # alice's endpoint, in tenant
            with psycopg.connect(url) as check:
                states = check.execute(
                    "SELECT (SELECT state FROM tenant.conveyor_jobs WHERE id = %s),"
                    " (SELECT state FROM public.conveyor_jobs WHERE id = %s)",
                    (job_id, job_id),
                ).fetchone()
            assert states == ("succeeded", "queued")
        finally:
            built.dispose()
            plain.dispose()


def test_relaxed_writes_end_their_setting_with_their_statement(engine: Engine) -> None:
    """The `started` and progress writes skip the wait for the disk on their own statement
    only: the connection, and any transaction around them, keep waiting for it."""
    job_id = _new(engine)
    hostile = "it's ü; DROP TABLE conveyor_jobs; --"
    with engine.connect() as connection:
        auto = connection.execution_options(isolation_level="AUTOCOMMIT")
        started = ledger.start_attempt(auto, job_id, worker_host=hostile)
        progress = ledger.record_progress(auto, job_id, 1, 2, hostile)
        after = auto.exec_driver_sql("SHOW synchronous_commit").scalar()
    assert started is not None
    assert started["worker_host"] == hostile
    assert progress is not None
    assert progress["progress_message"] == hostile
    assert after == "on"
    with engine.begin() as connection:
        ledger.record_progress(connection, job_id, 2, 2, "in a transaction")
        inside = connection.exec_driver_sql("SHOW synchronous_commit").scalar()
    assert inside == "on"
    with Session(engine) as session:
        stored = session.get(Job, job_id)
        assert stored is not None
        assert (stored.progress_current, stored.progress_message) == (2, "in a transaction")
