"""Static checks of the deployment files (Dockerfile, compose, systemd, supervisor): linters,
schemas, and that every command, option and setting they name exists. No server is started.

Each check is a function returning its problems; a test runs it on the committed file and a
second one on a broken copy, so no check can pass by finding nothing to look at.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from conveyor.cli import app as conveyor_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SYSTEMD = DEPLOY / "systemd"
SUPERVISOR = DEPLOY / "supervisor" / "conveyor.conf"
BIN = Path(sys.executable).parent
# Where the units and the supervisor programs expect the venv.
DEPLOYED_BIN = "/opt/conveyor/venv/bin/"
OUR_FILES = [
    DOCKERFILE,
    COMPOSE,
    SUPERVISOR,
    *sorted(SYSTEMD.iterdir()),
    DEPLOY / "README.md",
]


def tool(name: str) -> str:
    """A linter from the dev extra (in the venv), else from PATH; skip with how to get it."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} not installed: pip install -e '.[dev]' (or ./dev test)")
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


# --- Dockerfile -------------------------------------------------------------------------------


def hadolint_problems(dockerfile: str) -> list[str]:
    # Every warning counts; a deliberate one carries `# hadolint ignore=` and its reason.
    done = run([tool("hadolint"), "--no-color", "-"], input=dockerfile)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def dockerfile_problems(dockerfile: str) -> list[str]:
    problems = []
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    if not users or users[-1] in {"root", "0"}:
        problems.append("the image must end as a non-root USER")
    if not re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]', dockerfile, re.MULTILINE):
        problems.append("tini must be PID 1, so SIGTERM reaches Celery")
    if "HEALTHCHECK" not in dockerfile or "/health/live" not in dockerfile:
        problems.append("no HEALTHCHECK on /health/live")
    final = dockerfile.rsplit("\nFROM ", 1)[-1]
    if re.search(r"\b(gcc|build-essential|g\+\+)\b", final):
        problems.append("a compiler in the final stage")
    return problems


def test_dockerfile_passes_hadolint() -> None:
    assert hadolint_problems(DOCKERFILE.read_text()) == []


def test_hadolint_finds_a_missing_no_install_recommends() -> None:
    broken = DOCKERFILE.read_text().replace("--no-install-recommends ", "")
    assert any("DL3015" in line for line in hadolint_problems(broken))


def test_dockerfile_is_non_root_with_tini_and_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    broken = text.replace("USER 10001", "USER root").replace("ENTRYPOINT", "# ENTRYPOINT")
    assert len(dockerfile_problems(broken)) == 2


# --- compose ----------------------------------------------------------------------------------


def compose_schema_problems(path: Path) -> list[str]:
    done = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    return [] if done.returncode == 0 else (done.stdout + done.stderr).splitlines()


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_schema_problems(COMPOSE) == []


def test_the_compose_schema_check_finds_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    assert compose_schema_problems(broken) != []


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    redis = " ".join(services["redis"]["command"])
    for needed in ("--appendonly yes", "--maxmemory-policy noeviction"):
        if needed not in redis:
            problems.append(f"redis: {needed} missing")
    for name, service in services.items():
        command = service.get("command") or []
        is_conveyor = service.get("image", "").startswith("conveyor")
        if is_conveyor and name != "migrate":
            after = service.get("depends_on", {}).get("migrate", {}).get("condition")
            if after != "service_completed_successfully":
                problems.append(f"{name}: does not wait for migrate")
        long_running = service.get("restart", "unless-stopped") != "no"
        # The API keeps the image's HEALTHCHECK; every other long-running service has one.
        keeps_image_check = is_conveyor and command[:2] == ["conveyor", "api"]
        if long_running and "healthcheck" not in service and not keeps_image_check:
            problems.append(f"{name}: no healthcheck")
    return problems


def test_compose_services_wait_for_migrate_and_have_health_checks() -> None:
    services = compose_services()
    assert compose_problems(services) == []
    del services["worker"]["healthcheck"]
    services["api"]["depends_on"] = {}
    services["redis"]["command"] = ["redis-server"]
    assert len(compose_problems(services)) == 4


# --- systemd ----------------------------------------------------------------------------------


def units_to_verify(target: Path, replace: tuple[str, str] | None = None) -> list[str]:
    """The units, pointed at this venv, the template as two instances (one queue, and an
    escaped queue list)."""
    names = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        text = unit.read_text().replace(DEPLOYED_BIN, f"{BIN}/")
        if replace:
            text = text.replace(*replace)
        if unit.name.endswith("@.service"):
            for instance in ("images", r"default\x2cemail"):
                name = unit.name.replace("@.", f"@{instance}.")
                (target / name).write_text(text)
                names.append(name)
        else:
            (target / unit.name).write_text(text)
            names.append(unit.name)
    return names


def systemd_problems(directory: Path, names: list[str]) -> list[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian's systemd package; ./dev test adds it)")
    # It only warns (exit 0) about an unknown directive or a bad value: any output counts.
    done = run([analyze, "verify", "--man=no", "--generators=no", *names], cwd=directory)
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return output or ([] if done.returncode == 0 else [f"exit {done.returncode}"])


def test_systemd_units_verify(tmp_path: Path) -> None:
    assert systemd_problems(tmp_path, units_to_verify(tmp_path)) == []


@pytest.mark.parametrize(
    "replace",
    [("KillMode=mixed", "KilMode=mixed"), ("Restart=always", "Restart=allways")],
    ids=["unknown-directive", "bad-value"],
)
def test_systemd_verify_finds_a_typo(tmp_path: Path, replace: tuple[str, str]) -> None:
    assert systemd_problems(tmp_path, units_to_verify(tmp_path, replace)) != []


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}


def unit_problems(name: str, text: str) -> list[str]:
    settings = unit_settings(text)
    problems = [
        f"{name}: {key}={value} missing"
        for key, value in HARDENING.items()
        if settings.get(key) != [value]
    ]
    for key in ("User", "EnvironmentFile"):
        if key not in settings:
            problems.append(f"{name}: no {key}=")
    if settings.get("Type") != ["oneshot"] and settings.get("Restart") != ["always"]:
        problems.append(f"{name}: Restart=always missing")
    return problems


def test_systemd_units_are_hardened_and_restart() -> None:
    for unit in SYSTEMD.glob("*.service"):
        assert unit_problems(unit.name, unit.read_text()) == []
    worker = (SYSTEMD / "conveyor-worker@.service").read_text()
    assert len(unit_problems("w", worker.replace("ProtectSystem=strict", ""))) == 1


# --- supervisor -------------------------------------------------------------------------------


def supervisor_programs(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser(inline_comment_prefixes=None)
    parser.read_string(text)
    return {
        section.removeprefix("program:"): dict(parser[section])
        for section in parser.sections()
        if section.startswith("program:")
    }


def supervisor_environment(program: dict[str, str]) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', program.get("environment", "")))


def supervisor_problems(programs: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for name, program in programs.items():
        for key, value in {"autorestart": "true", "stopsignal": "TERM"}.items():
            if program.get(key) != value:
                problems.append(f"{name}: {key}={value} missing")
        if program.get("killasgroup") != "true":
            problems.append(f"{name}: killasgroup=true missing")
        # A worker's pool children must not get the SIGTERM: they would die mid-job.
        if is_worker(shlex.split(program["command"])) and program.get("stopasgroup") != "false":
            problems.append(f"{name}: stopasgroup=false missing")
    return problems


def test_supervisor_programs_restart_and_stop_with_term() -> None:
    programs = supervisor_programs(SUPERVISOR.read_text())
    assert {"conveyor-api", "conveyor-beat", "conveyor-scheduler"} <= set(programs)
    assert supervisor_problems(programs) == []
    programs["conveyor-api"]["stopsignal"] = "KILL"
    programs["conveyor-worker-images"]["stopasgroup"] = "true"
    assert len(supervisor_problems(programs)) == 2


# --- commands ---------------------------------------------------------------------------------


def expand(argv: list[str]) -> list[str]:
    """Placeholders of the process managers, as they expand them."""
    table = {
        "%I": "images",
        "%i": "images",
        "%H": "host",
        "%(host_node_name)s": "host",
        "$HOSTNAME": "host",
        "$$HOSTNAME": "host",
    }
    out = []
    for word in argv:
        for placeholder, value in sorted(table.items(), key=lambda item: -len(item[0])):
            word = word.replace(placeholder, value)
        out.append(word.removeprefix(DEPLOYED_BIN))
    return out


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every command line in the deployment files."""
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd is not None
    yield "Dockerfile CMD", json.loads(cmd.group(1))
    check = re.search(r"^\s+CMD (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert check is not None
    yield "Dockerfile HEALTHCHECK", json.loads(check.group(1))
    for name, service in compose_services().items():
        if service.get("command"):
            yield f"compose {name}", list(service["command"])
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD":
            yield f"compose {name} healthcheck", list(test[1:])
        elif test and test[0] == "CMD-SHELL":
            yield f"compose {name} healthcheck", shlex.split(test[1])
    for unit in sorted(SYSTEMD.glob("*.service")):
        for line in unit_settings(unit.read_text()).get("ExecStart", []):
            yield unit.name, shlex.split(line)
    for name, program in supervisor_programs(SUPERVISOR.read_text()).items():
        yield f"supervisor {name}", shlex.split(program["command"])


def conveyor_problems(argv: list[str]) -> list[str]:
    """Parse argv as `conveyor` would (options and their types), without running it."""
    command: Any = typer.main.get_command(conveyor_app)
    try:
        ctx = command.make_context("conveyor", list(argv))
        args = [*ctx._protected_args, *ctx.args]
        while hasattr(command, "resolve_command"):
            name, command, rest = command.resolve_command(ctx, args)
            ctx = command.make_context(name, rest, parent=ctx)
            args = [*getattr(ctx, "_protected_args", []), *ctx.args]
    except Exception as exc:
        return [f"conveyor {shlex.join(argv)}: {exc}"]
    return [f"conveyor {shlex.join(argv)}: extra arguments {args}"] if args else []


@cache
def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="conveyor-deploy-help-")


@cache
def help_exit(argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    # Loading conveyor.worker needs a broker URL and a data directory, never a connection.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env |= {"CONVEYOR_REDIS_URL": "redis://127.0.0.1:1/0", "CONVEYOR_DATA_DIR": scratch_dir()}
    return run([str(BIN / argv[0]), *argv[1:], "--help"], env=env, cwd=ROOT)


def celery_problems(argv: list[str]) -> list[str]:
    """`celery ... --help` exits 0 only when every option before it exists and its value
    is valid; an inspect command's name is checked here, as Celery checks it only when run."""
    from celery.app.control import Inspect

    if argv[:2] != ["-A", "conveyor.worker"]:
        return [f"celery {shlex.join(argv)}: not `-A conveyor.worker`"]
    if argv[2:3] == ["inspect"] and not hasattr(Inspect, argv[3]):
        return [f"celery {shlex.join(argv)}: no inspect command {argv[3]}"]
    done = help_exit(("celery", *argv))
    return [] if done.returncode == 0 else [f"celery {shlex.join(argv)}: {done.stderr.strip()}"]


def queue_problems(argv: list[str]) -> list[str]:
    from conveyor.core.settings import get_settings
    from conveyor.core.workloads import queues

    declared = set(queues(get_settings()))
    problems = []
    for flag, value in itertools.pairwise(argv):
        if flag in {"-Q", "--queues"}:
            problems += [f"queue {q} not declared" for q in value.split(",") if q not in declared]
    return problems


def line_problems(argv: list[str]) -> list[str]:
    program, args = Path(argv[0]).name, argv[1:]
    if program == "conveyor":
        return conveyor_problems(args) + queue_problems(args)
    if program == "celery":
        return celery_problems(args) + queue_problems(args)
    if program == "python" and args[:1] == ["-c"]:
        try:
            compile(args[1], "<healthcheck>", "exec")
        except SyntaxError as exc:
            return [f"python -c: {exc}"]
    return []  # redis-server, pg_isready, redis-cli: the images' own


def test_every_command_line_parses() -> None:
    lines = [(where, expand(argv)) for where, argv in command_lines()]
    assert len(lines) > 20
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(lambda line: [f"{line[0]}: {p}" for p in line_problems(line[1])], lines)
    assert [problem for problems in found for problem in problems] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["conveyor", "api", "--worker", "2"],
        ["conveyor", "api", "--workers", "two"],
        ["conveyor", "db", "upgrad"],
        ["conveyor", "worker", "-Q", "image"],
        ["celery", "-A", "conveyor.worker", "worker", "--queue-names", "images"],
        ["celery", "-A", "conveyor.worker", "inspect", "pingg"],
        ["python", "-c", "import os,"],
    ],
)
def test_a_wrong_command_line_is_found(argv: list[str]) -> None:
    assert line_problems(argv) != []


# --- settings and stop timeouts ---------------------------------------------------------------


@cache
def real_settings() -> dict[str, Any]:
    """Every CONVEYOR_* variable with its default, as `conveyor settings --json` lists them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    done = run([str(BIN / "conveyor"), "settings", "--json"], env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return {item["variable"]: item["default"] for item in json.loads(done.stdout)}


def setting_problems(text: str) -> list[str]:
    named = set(re.findall(r"\bCONVEYOR_[A-Z0-9_]*[A-Z0-9]\b", text))
    return sorted(named - set(real_settings()))


def test_every_conveyor_variable_named_is_a_setting() -> None:
    for path in OUR_FILES:
        assert setting_problems(path.read_text()) == [], path
    assert setting_problems("CONVEYOR_TASK_TIMELIMIT=360") == ["CONVEYOR_TASK_TIMELIMIT"]


def seconds(duration: str | int) -> float:
    """A compose duration (390s, 6m30s) or a plain number of seconds."""
    if isinstance(duration, int) or str(duration).isdigit():
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert parts, duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * scale[unit] for number, unit in parts)


def time_limit(env: dict[str, Any]) -> float:
    return float(env.get("CONVEYOR_TASK_TIME_LIMIT", real_settings()["CONVEYOR_TASK_TIME_LIMIT"]))


def is_worker(argv: list[str]) -> bool:
    return "worker" in argv[:4] and Path(argv[0]).name in {"conveyor", "celery"}


def grace_problems() -> list[str]:
    """Every worker's stop timeout exceeds the task time limit the same file gives it."""
    problems = []
    for name, service in compose_services().items():
        if is_worker(service.get("command", [])):
            grace = seconds(service.get("stop_grace_period", "10s"))
            if grace <= time_limit(service.get("environment", {})):
                problems.append(f"compose {name}: stop_grace_period {grace}")
    for unit in SYSTEMD.glob("*.service"):
        settings = unit_settings(unit.read_text())
        if is_worker(shlex.split(settings["ExecStart"][0])):
            env = dict(item.split("=", 1) for item in settings.get("Environment", []))
            grace = seconds(settings.get("TimeoutStopSec", ["90"])[0])
            if grace <= time_limit(env):
                problems.append(f"{unit.name}: TimeoutStopSec {grace}")
            if settings.get("KillSignal") != ["SIGTERM"]:
                problems.append(f"{unit.name}: KillSignal=SIGTERM missing")
    example = unit_settings((SYSTEMD / "conveyor.env.example").read_text())
    if "CONVEYOR_TASK_TIME_LIMIT" in example:
        problems.append("conveyor.env.example would override the units' time limit")
    for name, program in supervisor_programs(SUPERVISOR.read_text()).items():
        if is_worker(shlex.split(program["command"])):
            grace = seconds(program.get("stopwaitsecs", "10"))
            if grace <= time_limit(supervisor_environment(program)):
                problems.append(f"supervisor {name}: stopwaitsecs {grace}")
    return problems


def test_workers_stop_timeouts_exceed_the_task_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert grace_problems() == []
    # The same files with a task time limit of 400 s: every worker's timeout is too short.
    monkeypatch.setattr(sys.modules[__name__], "time_limit", lambda env: 400.0)
    found = grace_problems()
    assert sum("compose" in p for p in found) == 2, found
    assert sum("supervisor" in p for p in found) == 2, found
    assert sum("TimeoutStopSec" in p for p in found) == 1, found
