"""Settings docs: every field described and grouped, docs/settings.md current, secrets masked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.core import settings_docs, workloads
from conveyor.core.settings import Settings, get_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def run_settings(*args: str) -> str:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["settings", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_docs_match_the_settings() -> None:
    assert DOCS.read_text(encoding="utf-8") == settings_docs.markdown(), (
        "docs/settings.md is out of date: run "
        "`.venv/bin/conveyor settings --markdown > docs/settings.md`"
    )


def test_markdown_option_prints_the_docs() -> None:
    assert run_settings("--markdown") == settings_docs.markdown()


def every_settings_class() -> list[type[BaseSettings]]:
    return [Settings, *(cls for _, cls in workloads.settings_classes())]


def test_every_field_has_a_description() -> None:
    undescribed = [
        f"{cls.__name__}.{name}"
        for cls in every_settings_class()
        for name, info in cls.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert undescribed == []


def test_every_field_is_in_exactly_one_group() -> None:
    counts = Counter(name for fields in settings_docs.GROUPS.values() for name in fields)
    assert {name for name, count in counts.items() if count > 1} == set()
    assert set(counts) == set(Settings.model_fields)
    # Each workload's fields once, in its own group, and none of them a core name too.
    shown = Counter(doc.name for doc in settings_docs.describe())
    every = [name for cls in every_settings_class() for name in cls.model_fields]
    assert sorted(shown.elements()) == sorted(every)
    assert {name for name, count in shown.items() if count > 1} == set()


def test_each_workload_has_its_own_group_after_the_core_ones() -> None:
    titles = list(dict.fromkeys(doc.group for doc in settings_docs.describe()))
    core = list(settings_docs.GROUPS)
    assert titles[: len(core)] == core
    assert titles[len(core) :] == [
        "Email workload",
        "Images workload",
        "Payments workload",
        "Reports workload",
        "Scraping workload",
    ]
    docs = {doc.name: doc for doc in settings_docs.describe()}
    assert docs["email_from"].group == "Email workload"
    assert docs["file_max_upload_bytes"].group == "Storage"


def test_pipes_are_escaped_in_markdown_cells() -> None:
    assert settings_docs._cell("a|b", code=True) == "`a\\|b`"


def test_secret_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_STRIPE_API_KEY", "sk_test_abc123")
    output = run_settings()
    assert "sk_test_abc123" not in output
    assert settings_docs.MASKED in output


def test_database_password_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://app:hunter2@db/x")
    output = run_settings()
    assert "hunter2" not in output
    assert "postgresql://app:***@db/x" in output


def test_changed_lists_only_changed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_PORT", "8123")
    output = run_settings("--changed")
    assert "CONVEYOR_API_PORT" in output
    assert "8123" in output
    assert "CONVEYOR_API_HOST" not in output


def test_changed_includes_workload_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_EMAIL_FROM", "Acme <hello@example.com>")
    output = run_settings("--changed")
    assert "CONVEYOR_EMAIL_FROM" in output
    assert "hello@example.com" in output
    assert "CONVEYOR_SMTP_HOST" not in output


def test_unset_and_path_defaults_are_shown_as_text() -> None:
    docs = {doc.name: doc for doc in settings_docs.describe()}
    assert docs["redis_url"].default == settings_docs.UNSET
    assert docs["data_dir"].default == ".conveyor"
    assert not any(doc.changed for doc in docs.values())


def test_a_misspelt_variable_is_named_with_the_setting_it_was_likely_meant_for() -> None:
    lines = settings_docs.unknown_variables(
        {
            "CONVEYOR_SCRAPE_CRAWL_JOB": "3",
            "CONVEYOR_API_PORT": "8000",  # a setting
            "CONVEYOR_TEST_REDIS_DB": "12",  # the test suite's own
            "PATH": "/usr/bin",
        }
    )
    assert lines == [
        "CONVEYOR_SCRAPE_CRAWL_JOB is not a Conveyor setting and is ignored; "
        "did you mean CONVEYOR_SCRAPE_CRAWL_JOBS?"
    ]
