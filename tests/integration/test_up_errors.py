"""Every mistake a new user makes with `conveyor up` and the CLI gets one line and an exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REDIS_HOST, REDIS_PORT, _redis_reachable


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(settings)
    return env


def conveyor(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from conveyor.cli import main; main()", *args],
        cwd=cwd,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Conveyor is up" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_pinned_api_port_in_use_names_the_setting(tmp_path: Path, busy_port: int) -> None:
    result = conveyor(tmp_path, "up", CONVEYOR_API_PORT=str(busy_port))
    assert result.returncode == 2
    assert one_line(result) == (
        f"conveyor: port {busy_port} on 127.0.0.1 is already in use "
        f"(CONVEYOR_API_PORT={busy_port}); stop what listens there, or set CONVEYOR_API_PORT "
        "to a free port"
    )
    # Checked before anything started: no embedded Redis, no runtime file.
    assert not (tmp_path / ".conveyor" / "redis").exists()
    assert not (tmp_path / ".conveyor" / "runtime.json").exists()


def test_a_pinned_mail_sink_port_in_use_names_the_setting(tmp_path: Path, busy_port: int) -> None:
    result = conveyor(tmp_path, "up", CONVEYOR_SMTP_PORT=str(busy_port))
    assert result.returncode == 2
    assert one_line(result) == (
        f"conveyor: port {busy_port} on 127.0.0.1 is already in use "
        f"(CONVEYOR_SMTP_PORT={busy_port}); stop what listens there, or set CONVEYOR_SMTP_PORT "
        "to a free port"
    )


def test_the_mail_sink_alone_on_a_taken_port_is_one_line(tmp_path: Path, busy_port: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.local.mail_sink", "--port", str(busy_port)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"conveyor: the mail sink cannot listen on 127.0.0.1:{busy_port} (")
    assert line.endswith(
        "set CONVEYOR_SMTP_PORT to a free port, or CONVEYOR_SMTP_HOST to use the server that "
        "listens there"
    )


def test_a_typo_in_task_modules_stops_up_before_the_banner(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "up", CONVEYOR_TASK_MODULES="myapp.taks")
    assert result.returncode == 2
    assert one_line(result) == (
        f"conveyor: CONVEYOR_TASK_MODULES: no module 'myapp.taks' importable from {tmp_path}; "
        "check the spelling, and run from the folder that holds it or add that folder to "
        "PYTHONPATH"
    )


def test_a_typo_in_task_modules_stops_a_celery_worker_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "conveyor.worker", "worker"],
        cwd=tmp_path,
        env=_env(
            CONVEYOR_TASK_MODULES="myapp.taks",
            CONVEYOR_REDIS_URL="redis://127.0.0.1:1/0",
            CONVEYOR_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "conveyor: CONVEYOR_TASK_MODULES: no module 'myapp.taks' importable" in result.stderr


def test_a_malformed_bootstrap_key_is_one_line(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "up", CONVEYOR_BOOTSTRAP_API_KEY="secret123")
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(
        "conveyor: invalid configuration: CONVEYOR_BOOTSTRAP_API_KEY: must look like "
        "cvk_<12 hex digits>_<a secret of 24+ characters>; make one with: python3 -c"
    )
    assert "secret123" not in line


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["jobs", "list"],
        ["jobs", "show", "abc"],
        ["dead-letters", "list"],
        ["dead-letters", "replay", "abcd"],
        ["keys", "list"],
        ["cleanup"],
    ],
)
def test_nothing_running_and_nothing_set_is_one_line(tmp_path: Path, command: list[str]) -> None:
    result = conveyor(tmp_path, *command)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(
        f"conveyor: no Conveyor running here (nothing in {tmp_path / '.conveyor'}); start one "
        "with `./dev up` or `conveyor up`, or set CONVEYOR_DATA_DIR to a running one's data "
        "directory, or CONVEYOR_"
    )
    # Nothing invented: no empty ledger that `db upgrade` would then make a second one of.
    assert not (tmp_path / ".conveyor" / "conveyor.db").exists()


def test_an_unreachable_redis_is_one_line_not_a_hang(tmp_path: Path) -> None:
    settings = {
        "CONVEYOR_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
        "CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    assert conveyor(tmp_path, "db", "upgrade", **settings).returncode == 0
    result = conveyor(tmp_path, "status", **settings)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("conveyor: cannot reach Redis at redis://:***@127.0.0.1:1/0: ")
    assert "hunter2" not in result.stderr


def test_another_directory_with_the_urls_set_works(tmp_path: Path) -> None:
    if not _redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}")
    settings = {
        "CONVEYOR_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/14",
        "CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path / 'project' / 'c.db'}",
    }
    assert conveyor(tmp_path, "db", "upgrade", **settings).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = conveyor(elsewhere, "jobs", "list", **settings)
    assert listed.returncode == 0, listed.stderr
    status = conveyor(elsewhere, "status", **settings)
    assert f"redis://{REDIS_HOST}:{REDIS_PORT}/14 (CONVEYOR_REDIS_URL)" in status.stdout
    assert "(CONVEYOR_DATABASE_URL)" in status.stdout
    assert not (elsewhere / ".conveyor").exists()
