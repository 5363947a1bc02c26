"""`conveyor flower` refuses, in one line, what would otherwise end in a traceback."""

from __future__ import annotations

import socket
import sys

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.cli.flower import MISSING_EXTRA


def test_without_the_extra_it_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flower", None)  # `import flower` now fails
    result = CliRunner().invoke(app, ["flower"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [MISSING_EXTRA]
    assert 'pip install "conveyor[flower]"' in MISSING_EXTRA
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_taken_port_is_one_line_naming_the_option() -> None:
    pytest.importorskip("flower")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = CliRunner().invoke(app, ["flower", "--port", str(port)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "--port" in lines[0]
    assert str(port) in lines[0]


def test_basic_auth_needs_a_user_and_a_password() -> None:
    result = CliRunner().invoke(app, ["flower", "--basic-auth", "just-a-user"])
    assert result.exit_code == 2
    assert "USER:PASSWORD" in result.output


def test_flower_runs_on_conveyors_app_with_events_on(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flower")
    started: list[list[str]] = []

    class FakeCelery:
        def start(self, argv: list[str]) -> None:
            started.append(argv)

    monkeypatch.setattr("conveyor.core.celery_app.get_celery", FakeCelery)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(app, ["flower", "--port", str(port), "--basic-auth", "u:p"])
    assert result.exit_code == 0, result.output
    assert started == [
        [
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--enable_events=true",
            "--basic_auth=u:p",
        ]
    ]
