"""Start-up checks that turn a bad URL or a down service into one line a person can act on."""

from __future__ import annotations

import redis
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from conveyor.core import db
from conveyor.core.settings import Settings, SettingsError, get_settings


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
            f"cannot connect to the database ({_safe_url(settings.database)}): "
            f"{_first_line(exc.orig or exc)}"
        ) from None


def require_redis(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    try:
        client = redis.Redis.from_url(settings.redis, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except ValueError as exc:
        raise SettingsError(f"CONVEYOR_REDIS_URL is not a usable URL: {exc}") from None
    except redis.RedisError as exc:
        raise SettingsError(
            f"cannot reach Redis at {_safe_url(settings.redis)}: {_first_line(exc)}"
        ) from None


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
