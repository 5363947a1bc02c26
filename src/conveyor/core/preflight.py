"""Start-up checks that turn a bad URL or a down service into one line a person can act on."""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from fnmatch import fnmatchcase
from pathlib import Path

import redis
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from conveyor.core import db, workloads
from conveyor.core.redaction import safe_url
from conveyor.core.redis_client import connect
from conveyor.core.settings import Settings, SettingsError, get_settings, section
from conveyor.core.storage import require_s3

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def require_database(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    try:
        db.ping(settings)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise SettingsError(
            f"CONVEYOR_DATABASE_URL is not a usable URL: {_first_line(exc)}"
        ) from None
    except OSError as exc:
        # The SQLite file's folder cannot be made: a file in the way, no permission.
        raise SettingsError(f"cannot create the SQLite database: {_first_line(exc)}") from None
    except OperationalError as exc:
        raise SettingsError(
            f"cannot connect to the database ({safe_url(settings.database)}): "
            f"{_first_line(exc.orig or exc)}"
        ) from None


def require_redis(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    try:
        client = connect(settings.redis, settings, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except ValueError as exc:
        raise SettingsError(f"CONVEYOR_REDIS_URL is not a usable URL: {exc}") from None
    except redis.RedisError as exc:
        raise SettingsError(
            f"cannot reach Redis at {safe_url(settings.redis)}: {_first_line(exc)}"
        ) from None


def require_task_modules(settings: Settings | None = None) -> None:
    """Each module of CONVEYOR_TASK_MODULES imports from the working directory, as the worker
    will import it; a typo or a broken module otherwise surfaces as pages of Celery
    tracebacks whose first line blames `conveyor.worker`."""
    settings = settings or get_settings()
    if settings.storage_backend == "s3":
        # The backend's extra is missing: say so at start-up, not at the first upload.
        require_s3()
    # CONVEYOR_WORKLOADS naming one that is not installed, or whose extra is missing.
    enabled = {workload.name for workload in workloads.enabled(settings)}
    # A bad workload setting stops the start, as a bad core one does, not its first job.
    for name, cls in workloads.settings_classes():
        if name in enabled:
            section(cls)
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        for name in settings.extra_task_modules:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise SettingsError(
                    f"CONVEYOR_TASK_MODULES: no module {name!r} importable from {cwd}; check "
                    "the spelling, and run from the folder that holds it or add that folder "
                    "to PYTHONPATH"
                )
            try:
                importlib.import_module(name)
            except Exception as exc:
                raise SettingsError(
                    f"CONVEYOR_TASK_MODULES: importing {name!r} failed at {_where(exc)}: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from None
        _require_declared_queues(settings)
    finally:
        if added:
            sys.path.remove(cwd)


def _require_declared_queues(settings: Settings) -> None:
    """A task declaring `queue="billing"` needs that queue declared, or no worker consumes
    it and its jobs wait for ever: say so when the worker starts, not at the first send."""
    from conveyor.core.celery_app import get_celery

    try:
        # Reading the tasks' options configures the app, which needs both URLs.
        _ = (settings.broker, settings.result_backend)
    except SettingsError:
        return  # nothing to send to yet: the caller reports that on its own
    declared = workloads.queues(settings)
    tasks = get_celery().tasks
    for name, task in sorted(tasks.items()):
        queue = getattr(task, "queue", None)
        if queue and queue not in declared:
            raise SettingsError(
                f"task {name} declares queue {queue!r}, which is not declared: add it to "
                f"CONVEYOR_QUEUES (declared: {', '.join(declared)})"
            )
    # A pattern with a typo routes nothing, and its tasks quietly go to `default`.
    for queue, patterns in settings.declared_queues.items():
        for pattern in patterns:
            if not any(fnmatchcase(name, pattern) for name in tasks):
                log.warning(
                    "CONVEYOR_QUEUES: the pattern %r of queue %r matches no task this worker "
                    "loaded; check its spelling",
                    pattern,
                    queue,
                )


def _where(exc: BaseException) -> str:
    """file:line of the deepest frame outside the import machinery: the user's broken line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "import"
