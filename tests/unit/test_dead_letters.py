"""Finding a dead letter by its id or a unique prefix of it, in the store and in the CLI."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.core import dead_letters
from conveyor.core.models import DeadLetter
from conveyor.core.settings import get_settings


def make_letter(session: Session, letter_id: str) -> DeadLetter:
    failure = dead_letters.Failure(
        job_id=f"job-{letter_id}",
        task_name="conveyor.workloads.email.send",
        queue="email",
        owner="alice",
        args=[],
        kwargs={},
        exc=ConnectionError("smtp down"),
        traceback=None,
        reason="retries_exhausted",
        attempts=3,
    )
    letter = dead_letters.record(session, failure)
    letter.id = letter_id  # ids are random hex; these share prefixes on purpose
    session.commit()
    return letter


@pytest.fixture
def letters(session: Session) -> Session:
    for letter_id in ("abcd0001", "abcd0002", "abce0003", "ff00ff00"):
        make_letter(session, letter_id)
    return session


@pytest.mark.parametrize(
    ("given", "found"),
    [
        ("abce0003", "abce0003"),
        ("abce", "abce0003"),
        ("abcd0002", "abcd0002"),
        ("ff00f", "ff00ff00"),
    ],
)
def test_a_full_id_or_a_unique_prefix_finds_one(letters: Session, given: str, found: str) -> None:
    match = dead_letters.find_by_prefix(letters, given)
    assert match.letter is not None
    assert (match.letter.id, match.count) == (found, 1)


def test_a_shared_prefix_counts_the_matches(letters: Session) -> None:
    assert dead_letters.find_by_prefix(letters, "abcd") == dead_letters.PrefixMatch(None, 2)
    assert dead_letters.find_by_prefix(letters, "abcd000") == dead_letters.PrefixMatch(None, 2)


@pytest.mark.parametrize("given", ["abcf", "ABCE", "abc", "ab%", "abc_", "abcd0001x", ""])
def test_no_match_unknown_short_or_wildcard(letters: Session, given: str) -> None:
    assert dead_letters.find_by_prefix(letters, given) == dead_letters.PrefixMatch(None, 0)


def test_an_owner_sees_only_their_own(letters: Session) -> None:
    assert dead_letters.find_by_prefix(letters, "abce", owner="bob").letter is None
    match = dead_letters.find_by_prefix(letters, "abce", owner="alice")
    assert match.letter is not None


def test_the_cli_takes_a_prefix_and_refuses_an_ambiguous_one(
    letters: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", engine.url.render_as_string())
    get_settings.cache_clear()
    runner = CliRunner()

    ambiguous = runner.invoke(app, ["dead-letters", "delete", "abcd"])
    assert ambiguous.exit_code == 1
    assert ambiguous.output.strip() == "abcd matches 2 dead letters; give more characters"

    missing = runner.invoke(app, ["dead-letters", "show", "9999"])
    assert missing.exit_code == 1
    assert missing.output.strip() == "no dead letter 9999"

    shown = runner.invoke(app, ["dead-letters", "show", "abce"])
    assert shown.exit_code == 0, shown.output
    assert '"id": "abce0003"' in shown.output

    deleted = runner.invoke(app, ["dead-letters", "delete", "abcd0001"])
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output.strip() == "deleted abcd0001"
    again = runner.invoke(app, ["dead-letters", "delete", "abcd"])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == "deleted abcd0002"
