"""Settings: defaults, the CONVEYOR_ environment, `.env`, and one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.core.settings import (
    Settings,
    SettingsError,
    get_settings,
    load_settings,
)
from conveyor.workloads.email.settings import EmailSettings

# Limits that satisfy every cross-field rule, for tests that change one of them.
CONSISTENT_LIMITS = {
    "CONVEYOR_TASK_SOFT_TIME_LIMIT": "20",
    "CONVEYOR_TASK_TIME_LIMIT": "25",
    "CONVEYOR_VISIBILITY_TIMEOUT": "30",
    "CONVEYOR_RETRY_BACKOFF_MAX": "5",
}


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def settings_error(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> str:
    set_env(monkeypatch, values)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------


def test_api_defaults() -> None:
    settings = Settings()
    assert settings.api_port == 8000
    assert settings.api_host == "127.0.0.1"


def test_no_redis_is_guessed_when_none_is_configured_or_running(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.redis_url is None
    for attribute in ("redis", "broker", "result_backend"):
        with pytest.raises(SettingsError) as info:
            getattr(settings, attribute)
        assert str(info.value) == (
            f"no Conveyor running here (nothing in {tmp_path / '.conveyor'}); start one with "
            "`./dev up` or `conveyor up`, or set CONVEYOR_DATA_DIR to a running one's data "
            "directory, or CONVEYOR_REDIS_URL"
        )


def test_broker_and_result_backend_follow_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://cache.internal:6380/3")
    settings = Settings()
    assert settings.redis == "redis://cache.internal:6380/3"
    assert settings.broker == "redis://cache.internal:6380/3"
    assert settings.result_backend == "redis://cache.internal:6380/3"


def test_explicit_broker_url_overrides_only_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "amqp://guest@rabbit:5672//")
    settings = Settings()
    assert settings.broker == "amqp://guest@rabbit:5672//"
    assert settings.result_backend == "redis://cache:6379/0"


def test_database_defaults_to_sqlite_under_the_default_data_dir() -> None:
    settings = Settings()
    assert settings.data_dir == Path(".conveyor")
    assert settings.database == "sqlite:///.conveyor/conveyor.db"


def test_database_defaults_to_sqlite_under_a_configured_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / "state"))
    settings = Settings()
    assert settings.data_dir == tmp_path / "state"
    assert settings.database == "sqlite:///" + (tmp_path / "state" / "conveyor.db").as_posix()


@pytest.mark.parametrize(
    ("configured", "effective"),
    [
        ("postgresql://u:pw@db:5432/conveyor", "postgresql+psycopg://u:pw@db:5432/conveyor"),
        ("postgres://u:pw@db/conveyor", "postgresql+psycopg://u:pw@db/conveyor"),
        ("postgresql+psycopg://u@db/conveyor", "postgresql+psycopg://u@db/conveyor"),
        ("sqlite:////var/lib/conveyor.db", "sqlite:////var/lib/conveyor.db"),
    ],
)
def test_postgresql_urls_get_the_psycopg3_driver(
    monkeypatch: pytest.MonkeyPatch, configured: str, effective: str
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", configured)
    assert Settings().database == effective


def test_other_defaults_are_production_safe() -> None:
    settings = Settings()
    assert settings.task_soft_time_limit < settings.task_time_limit < settings.visibility_timeout
    assert settings.retry_backoff_max < settings.visibility_timeout
    assert settings.worker_prefetch_multiplier == 1
    assert settings.bootstrap_api_key is None
    assert settings.workloads == "auto"
    assert settings.declared_queues == {}


# --- the environment ---------------------------------------------------------------------


def test_settings_come_from_prefixed_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        {
            "CONVEYOR_API_PORT": "9001",
            "CONVEYOR_LOG_LEVEL": "debug",
            "CONVEYOR_LOG_JSON": "false",
            "CONVEYOR_MAX_BODY_BYTES": "4096",
            "CONVEYOR_BOOTSTRAP_API_KEY": "cvk_0123456789ab_topsecret-0123456789abcdefgh",
        },
    )
    settings = Settings()
    assert settings.api_port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.log_json is False
    assert settings.max_body_bytes == 4096
    assert settings.bootstrap_api_key is not None
    secret = settings.bootstrap_api_key.get_secret_value()
    assert secret == "cvk_0123456789ab_topsecret-0123456789abcdefgh"
    assert "topsecret" not in repr(settings)


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "9002")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    settings = Settings()
    assert settings.api_port == 8000
    assert settings.database_url is None


def test_dotenv_in_the_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("CONVEYOR_API_PORT=9100\nCONVEYOR_SMTP_PORT=2525\n")
    monkeypatch.setenv("CONVEYOR_SMTP_PORT", "2626")
    settings = Settings()
    assert settings.api_port == 9100
    # The real environment wins over `.env`, in a workload's section too.
    assert EmailSettings().smtp_port == 2626


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("CONVEYOR_API_PORT", "9200")
    assert get_settings() is first
    assert get_settings().api_port == 8000
    get_settings.cache_clear()
    assert get_settings().api_port == 9200


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@db/conveyor", "db.example.com/conveyor", "http://db/x"]
)
def test_unknown_database_scheme_is_rejected(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
    with pytest.raises(ValidationError):
        Settings()
    message = settings_error(monkeypatch, {})
    assert "CONVEYOR_DATABASE_URL" in message
    assert "\n" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "variable", ["CONVEYOR_REDIS_URL", "CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND_URL"]
)
@pytest.mark.parametrize("url", ["http://cache:6379/0", "localhost:6379", "memcached://x"])
def test_bad_redis_url_scheme_is_rejected(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    message = settings_error(monkeypatch, {variable: url})
    assert variable in message
    assert "\n" not in message


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "amqp://h//", "pyamqp://h//"])
def test_supported_broker_schemes_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", url)
    assert Settings().broker == url


@pytest.mark.parametrize(("soft", "hard"), [("25", "25"), ("26", "25")])
def test_soft_time_limit_must_be_below_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch, soft: str, hard: str
) -> None:
    message = settings_error(
        monkeypatch,
        {
            **CONSISTENT_LIMITS,
            "CONVEYOR_TASK_SOFT_TIME_LIMIT": soft,
            "CONVEYOR_TASK_TIME_LIMIT": hard,
        },
    )
    assert "CONVEYOR_TASK_SOFT_TIME_LIMIT" in message
    assert "\n" not in message


@pytest.mark.parametrize("visibility", ["25", "24"])
def test_visibility_timeout_must_exceed_the_time_limit(
    monkeypatch: pytest.MonkeyPatch, visibility: str
) -> None:
    message = settings_error(
        monkeypatch,
        {
            **CONSISTENT_LIMITS,
            "CONVEYOR_VISIBILITY_TIMEOUT": visibility,
            "CONVEYOR_RETRY_BACKOFF_MAX": "1",
        },
    )
    assert "CONVEYOR_VISIBILITY_TIMEOUT" in message
    assert "\n" not in message


@pytest.mark.parametrize("backoff_max", ["30", "31", "1000"])
def test_retry_backoff_max_must_be_below_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch, backoff_max: str
) -> None:
    message = settings_error(
        monkeypatch, {**CONSISTENT_LIMITS, "CONVEYOR_RETRY_BACKOFF_MAX": backoff_max}
    )
    assert "CONVEYOR_RETRY_BACKOFF_MAX" in message
    assert "\n" not in message


def test_limits_just_inside_every_rule_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "CONVEYOR_TASK_SOFT_TIME_LIMIT": "24",
            "CONVEYOR_TASK_TIME_LIMIT": "25",
            "CONVEYOR_VISIBILITY_TIMEOUT": "26",
            "CONVEYOR_RETRY_BACKOFF_MAX": "25.9",
        },
    )
    settings = load_settings()
    assert (settings.task_soft_time_limit, settings.task_time_limit) == (24, 25)
    assert settings.visibility_timeout == 26
    assert settings.retry_backoff_max == 25.9


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CONVEYOR_API_PORT", "0"),
        ("CONVEYOR_API_PORT", "70000"),
        ("CONVEYOR_API_PORT", "eighty"),
        ("CONVEYOR_LOG_LEVEL", "verbose"),
        ("CONVEYOR_MAX_BODY_BYTES", "10"),
        ("CONVEYOR_RETRY_MAX_ATTEMPTS", "-1"),
    ],
)
def test_field_errors_name_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = settings_error(monkeypatch, {variable: value})
    assert message.startswith("invalid configuration: ")
    assert variable in message
    assert "\n" not in message


def test_several_errors_are_reported_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch,
        {
            "CONVEYOR_DATABASE_URL": "mysql://db/x",
            "CONVEYOR_REDIS_URL": "http://cache",
            "CONVEYOR_API_PORT": "0",
        },
    )
    assert "\n" not in message
    for variable in ("CONVEYOR_DATABASE_URL", "CONVEYOR_REDIS_URL", "CONVEYOR_API_PORT"):
        assert variable in message


def test_load_settings_hides_the_pydantic_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "mysql://db/x")
    with pytest.raises(SettingsError) as info:
        load_settings()
    # `from None`: the person sees the one line, not a chained ValidationError.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_a_malformed_bootstrap_key_names_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = settings_error(monkeypatch, {"CONVEYOR_BOOTSTRAP_API_KEY": "secret123"})
    assert message.startswith(
        "invalid configuration: CONVEYOR_BOOTSTRAP_API_KEY: must look like "
        "cvk_<12 hex digits>_<a secret of 24+ characters>; make one with: python3 -c"
    )
    assert "secret123" not in message
