"""The deploy files run what they say: their exact command lines, started here as processes.

The commands and environment are read out of the rendered Kubernetes manifests (and out of
deploy/compose and deploy/systemd when they exist); only host names, ports, URLs and paths are
replaced by local ones: the test Redis, a fresh PostgreSQL database, free ports, temporary
directories, and a host name per pod (each process gets its own UTS namespace, as each pod
has its own host name, which the workers' node names and their liveness probe rely on).
Then the migration runs, the API, two workers on different queues, two schedulers and Beat
start, and jobs on three queues and a schedule's runs must all succeed.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml  # type: ignore[import-untyped]

from tests.integration.conftest import (
    Process,
    free_port,
    fresh_postgres_database,
    wait_for,
)
from tests.integration.test_deploy_kubernetes import (
    named,
    pod_spec,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
Doc = dict[str, Any]

pytestmark = pytest.mark.integration


@dataclass
class Service:
    """One process a deploy file starts: what it runs, with which environment, how many."""

    name: str
    argv: list[str]
    env: dict[str, str]
    replicas: int = 1
    # Commands the deployment runs against it: a waiting init step, a liveness probe.
    init: list[str] | None = None
    probe: list[str] | None = None
    # Services of one machine (systemd units) share its paths; a pod or container has its own.
    machine: str | None = None

    @property
    def role(self) -> str:
        return role_of(self.argv)


def role_of(argv: list[str]) -> str:
    words = [Path(word).name for word in argv]
    if words[:1] == ["celery"]:
        words = ["conveyor", *words[3:]]  # celery -A conveyor.worker worker|beat
    if words[:3] == ["conveyor", "db", "upgrade"]:
        return "migrate"
    if (
        len(words) > 1
        and words[0] == "conveyor"
        and words[1] in ("api", "worker", "scheduler", "beat")
    ):
        return words[1]
    return "other"


# --- reading the deploy files ---------------------------------------------------------------


def _container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, then env."""
    config_maps = {name: doc.get("data", {}) for name, doc in named(docs, "ConfigMap").items()}
    secrets = {name: doc.get("stringData", {}) for name, doc in named(docs, "Secret").items()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[item["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = config_maps[key["name"]][key["key"]]
    return env


def kubernetes_services() -> list[Service]:
    docs = render("keda")
    services = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = pod_spec(doc)
        main = spec["containers"][0]
        probe = main.get("livenessProbe", {}).get("exec", {}).get("command")
        inits = [c["command"] for c in spec.get("initContainers", [])]
        services.append(
            Service(
                name=doc["metadata"]["name"],
                argv=main["command"] + main.get("args", []),
                env=_container_env(docs, main),
                replicas=doc["spec"].get("replicas", 1) if doc["kind"] != "Job" else 1,
                init=inits[0] if inits else None,
                probe=probe,
            )
        )
    return services


def _compose_files() -> list[Path]:
    folder = ROOT / "deploy" / "compose"
    found = sorted(folder.glob("*compose*.y*ml")) if folder.is_dir() else []
    return found + sorted(p for p in (ROOT / "deploy").glob("*compose*.y*ml"))


def compose_services() -> list[Service]:
    services = []
    for path in _compose_files():
        document = yaml.safe_load(path.read_text()) or {}
        for name, body in (document.get("services") or {}).items():
            command = body.get("command")
            if command is None or body.get("profiles"):
                continue  # an image's own command, or an optional service (flower)
            env: dict[str, str] = {}
            env_files = body.get("env_file") or []
            for env_file in [env_files] if isinstance(env_files, str | dict) else env_files:
                file_name = env_file["path"] if isinstance(env_file, dict) else env_file
                env.update(_dotenv(path.parent / file_name))
            raw = body.get("environment") or {}
            if isinstance(raw, list):
                raw = dict(item.split("=", 1) for item in raw if "=" in item)
            env.update({key: str(value) for key, value in raw.items() if value is not None})
            replicas = int((body.get("deploy") or {}).get("replicas", 1))
            service = Service(f"compose-{name}", _compose_argv(command), _expand(env), replicas)
            test = (body.get("healthcheck") or {}).get("test")
            if service.role == "worker" and test:
                service.probe = _compose_argv(test)
            services.append(service)
    return services


def _compose_argv(command: str | list[str]) -> list[str]:
    """A compose command or healthcheck test as argv ($$ is compose's escaped $)."""
    if isinstance(command, str):
        return shlex.split(command)
    words = [word.replace("$$", "$") for word in command]
    if words[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(words[1:])]
    return words[1:] if words[0] == "CMD" else words


def systemd_services() -> list[Service]:
    folder = ROOT / "deploy" / "systemd"
    services = []
    for path in sorted(folder.glob("*.service")) if folder.is_dir() else []:
        parser = configparser.RawConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(_joined_lines(path.read_text()))
        if not parser.has_section("Service"):
            continue
        section = parser["Service"]
        env: dict[str, str] = {}
        for line in section.get("Environment", "").split("\n"):
            for assignment in shlex.split(line):
                key, _, value = assignment.partition("=")
                env[key] = value
        # Files listed in EnvironmentFile= override Environment= (systemd.exec(5)).
        for env_file in section.get("EnvironmentFile", "").split("\n"):
            env_file = env_file.strip().lstrip("-")
            if env_file:
                name = Path(env_file).name
                candidates = [Path(env_file), folder / name, folder / f"{name}.example"]
                existing = next((c for c in candidates if c.exists()), None)
                if existing is not None:
                    env.update(_dotenv(existing))
        exec_start = section.get("ExecStart", "").strip().lstrip("@-:+!")
        if not exec_start:
            continue
        if not path.name.endswith("@.service"):
            argv = shlex.split(exec_start)
            services.append(Service(f"systemd-{path.stem}", argv, env, machine="host"))
            continue
        # A template: one service per instance its comments tell to enable.
        for instance in _instances(path):
            argv = shlex.split(
                exec_start.replace("%I", instance).replace("%i", _systemd_escape(instance))
            )
            label = re.sub(r"[^a-z0-9-]", "-", instance)[:20]
            name = f"systemd-{path.stem.rstrip('@')}-{label}"
            services.append(Service(name, argv, env, machine="host"))
    return services


def _instances(path: Path) -> list[str]:
    """`systemctl enable ... name@INSTANCE` and `"name@$(systemd-escape INSTANCE)"`."""
    stem = re.escape(path.name.removesuffix(".service"))
    found = re.findall(rf"{stem}(?:\$\(systemd-escape ([^)]+)\)|([\w.,:-]+))", path.read_text())
    names = [escaped.strip() or plain for escaped, plain in found]
    return list(dict.fromkeys(name for name in names if not name.startswith(".")))


def _systemd_escape(text: str) -> str:
    return "".join(c if c.isalnum() or c in ":_." else f"\\x{ord(c):02x}" for c in text)


def _joined_lines(text: str) -> str:
    """A unit file with its backslash continuations joined, and repeated keys kept."""
    text = re.sub(r"\\\n\s*", " ", text)
    lines: list[str] = []
    counts: dict[str, int] = {}
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and key in ("Environment", "EnvironmentFile") and key in counts:
            lines.append(f"  {line.split('=', 1)[1]}")  # a continuation of the first one
            continue
        counts[key] = 1
        lines.append(line)
    return "\n".join(lines)


def _dotenv(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if not path.exists():
        return env
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        env[key.strip()] = value.strip().strip("'\"")
    return env


def _expand(env: dict[str, str]) -> dict[str, str]:
    """Compose's ${VAR:-default}: the default, as nothing is set here."""
    pattern = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")
    return {key: pattern.sub(lambda m: m.group(2) or "", value) for key, value in env.items()}


# --- running them here ----------------------------------------------------------------------


@dataclass
class Local:
    """What replaces the deployment's hosts, ports, URLs and paths on this machine."""

    redis_url: str
    database_url: str
    tmp: Path
    api_port: int = field(default_factory=free_port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, service: Service, pod: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("CONVEYOR_")
            and key not in ("PROMETHEUS_MULTIPROC_DIR", "REDIS_URL", "DATABASE_URL")
        }
        env.update(service.env)
        own = self.tmp / (service.machine or pod)
        replacements = {
            "CONVEYOR_DATABASE_URL": self.database_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_BROKER_URL": self.redis_url,
            "CONVEYOR_RESULT_BACKEND_URL": self.redis_url,
            # Each pod's own emptyDir; the files volume is shared by every pod.
            "CONVEYOR_DATA_DIR": str(own / "data"),
            "CONVEYOR_METRICS_DIR": str(own / "data" / "metrics"),
            "CONVEYOR_STORAGE_DIR": str(self.tmp / "files"),
            "CONVEYOR_API_HOST": "127.0.0.1",
            "CONVEYOR_API_PORT": str(self.api_port),
            "CONVEYOR_PUBLIC_BASE_URL": self.api_url,
            "CONVEYOR_WORKER_METRICS_PORT": str(free_port()),
            "CONVEYOR_SMTP_HOST": "127.0.0.1",
            "CONVEYOR_SMTP_PORT": str(free_port()),
            "HOME": str(own / "home"),
        }
        for key, value in replacements.items():
            if key in env:
                env[key] = value
        # Where the files leave them to the image or the defaults: this pod's, not the image's
        # directory nor port 8000 of this machine.
        env["CONVEYOR_DATA_DIR"] = replacements["CONVEYOR_DATA_DIR"]
        env["CONVEYOR_API_HOST"] = "127.0.0.1"
        env["CONVEYOR_API_PORT"] = str(self.api_port)
        # Docker and Kubernetes set it to the container's host name; probes may use it.
        env["HOSTNAME"] = pod
        for directory in (own / "data", own / "home", self.tmp / "files"):
            directory.mkdir(parents=True, exist_ok=True)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env


def local_argv(argv: list[str]) -> list[str]:
    """An installed path (/opt/conveyor/.venv/bin/conveyor) becomes this venv's."""
    first = Path(argv[0])
    if first.name in ("conveyor", "celery", "python", "python3") and first.is_absolute():
        return [str(VENV_BIN / first.name), *argv[1:]]
    return list(argv)


def in_pod(pod: str, argv: list[str], workdir: Path) -> list[str]:
    """Run argv under its own host name, as in its own pod, from a directory of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = 'hostname "$0" && cd "$1" && shift && exec "$@"'
    return ["unshare", "--uts", "--", "sh", "-c", script, pod, str(workdir), *argv]


def in_namespace_of(process: Process, argv: list[str]) -> list[str]:
    """Run argv inside a running process's UTS namespace: a probe exec'd in its pod."""
    assert process.process is not None
    return ["nsenter", "--target", str(process.process.pid), "--uts", "--", *argv]


def _can_unshare() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("hostname")):
        return False
    result = subprocess.run(
        ["unshare", "--uts", "--", "sh", "-c", "hostname probe-test"], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def local(system_redis_url: str, tmp_path: Path) -> Iterator[Local]:
    if not _can_unshare():
        pytest.skip("needs `unshare --uts` (root or CAP_SYS_ADMIN) to give each pod its host name")
    with fresh_postgres_database("conveyor_deploy") as database_url:
        # A Redis database apart from the stack's, emptied so stale jobs stay out.
        client = redis.Redis.from_url(system_redis_url)
        client.flushdb()
        try:
            yield Local(system_redis_url, database_url, tmp_path)
        finally:
            client.flushdb()


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_system(services: list[Service], local: Local) -> None:
    by_role: dict[str, list[Service]] = {}
    for service in services:
        by_role.setdefault(service.role, []).append(service)
    for role in ("migrate", "api", "worker", "scheduler"):
        assert by_role.get(role), f"no {role} among {[s.name for s in services]}"
    workers = by_role["worker"]
    assert len(workers) >= 2, "two workers on different queues"

    def run(service: Service, argv: list[str], pod: str, timeout: float) -> str:
        result = subprocess.run(
            in_pod(pod, local_argv(argv), local.tmp / pod),
            env=local.env(service, pod),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stdout}{result.stderr}"
        return result.stdout

    api = by_role["api"][0]
    init = api.init
    if init is not None:
        # Before the migration the init step waits (and would hold the pod back)...
        early = subprocess.Popen(
            in_pod("init-early", local_argv(init), local.tmp / "init-early"),
            env=local.env(api, "init-early"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                early.wait(6)
        finally:
            os.killpg(early.pid, signal.SIGKILL)  # the loop and whatever it runs
            early.wait()
    migrate = by_role["migrate"][0]
    run(migrate, migrate.argv, "migrate", timeout=90)
    if init is not None:
        # ...and once the tables are at head it lets the pod start.
        run(api, init, "init-after", timeout=30)

    with ExitStack() as stack:
        started: dict[str, Process] = {}

        def start(service: Service, pod: str) -> Process:
            env = local.env(service, pod)
            # systemd's %H is the machine's host name: here, the pod's.
            argv = [word.replace("%H", pod) for word in local_argv(service.argv)]
            process = Process(
                pod, in_pod(pod, argv, local.tmp / pod), env, local.tmp / f"{pod}.log"
            )
            process.start()
            stack.callback(process.stop, 30)
            started[pod] = process
            return process

        start(api, "api-0")
        for service in workers:
            start(service, f"{service.name}-0")
        for service in by_role["scheduler"]:
            for index in range(max(2, service.replicas)):
                start(service, f"{service.name}-{index}")
        for service in by_role.get("beat", []):
            start(service, f"{service.name}-0")

        def logs() -> str:
            return "\n".join(f"--- {pod}\n{p.log_tail(15)}" for pod, p in started.items())

        def answers(path: str, status: int = 200) -> bool:
            try:
                return httpx.get(f"{local.api_url}{path}", timeout=5).status_code == status
            except httpx.HTTPError:
                return False

        try:
            wait_for(lambda: answers("/health/ready"), 60, "the API to be ready")
            key = run(api, ["conveyor", "keys", "create", "deploy-smoke", "--admin"], "keys", 30)
            client = stack.enter_context(
                httpx.Client(
                    base_url=local.api_url,
                    headers={"Authorization": f"Bearer {key.strip().splitlines()[-1]}"},
                    timeout=15,
                )
            )
            names = {_node_name(service, f"{service.name}-0") for service in workers}

            def live_workers() -> bool:
                response = client.get("/health/workers")
                body = response.json() if response.status_code == 200 else {}
                return names <= {str(w) for w in _worker_names(body)}

            wait_for(live_workers, 60, f"workers {names} to answer")
            _check_probes(workers, started, local)
            jobs = _submit(client, workers)
            schedule = _schedule(client)
            for what, job_id in jobs.items():
                job = wait_for(partial(_finished, client, job_id), 120, f"the {what} job")
                assert job["state"] == "succeeded", (what, job)
            runs = wait_for(lambda: _schedule_runs(client, schedule, 2), 30, "two schedule runs")
            slots = [run_["slot"] for run_ in runs]
            assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
            for run_ in runs[:2]:
                job = wait_for(partial(_finished, client, run_["job_id"]), 60, "a run's job")
                assert job["state"] == "succeeded", job
            dead = [pod for pod, process in started.items() if process.process.poll() is not None]  # type: ignore[union-attr]
            assert not dead, f"exited early: {dead}"
        except BaseException:
            print(logs())
            raise


def _node_name(service: Service, pod: str) -> str:
    """The worker's Celery node name: its -n, else Celery's default celery@<host name>."""
    argv = [word.replace("%H", pod) for word in service.argv]
    for flag in ("-n", "--hostname"):
        if flag in argv:
            return argv[argv.index(flag) + 1].replace("%h", pod)
    return f"celery@{pod}"


def _worker_names(body: dict[str, Any]) -> list[str]:
    found = []
    for item in body.get("workers", []):
        found.append(item if isinstance(item, str) else item.get("name") or item.get("hostname"))
    return found


def _check_probes(workers: list[Service], started: dict[str, Process], local: Local) -> None:
    """Each worker's liveness probe passes in its pod, and fails where no worker answers."""
    for service in workers:
        if service.probe is None:
            continue
        pod = f"{service.name}-0"
        env = local.env(service, pod)
        result = subprocess.run(
            in_namespace_of(started[pod], service.probe),
            env=env,
            cwd=local.tmp / pod,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{pod} liveness: {result.stdout!r}{result.stderr!r}"
    probed = [service for service in workers if service.probe is not None]
    if not probed:
        return
    service = probed[0]
    assert service.probe is not None
    result = subprocess.run(
        in_pod("no-worker-here", service.probe, local.tmp / "no-worker-here"),
        env=local.env(service, "no-worker-here"),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0, "the liveness probe passes with no worker behind it"
    # Failing for the right reason: no answer, not a broken command line.
    assert b"No nodes replied" in result.stdout + result.stderr, result


def _submit(client: httpx.Client, workers: list[Service]) -> dict[str, str]:
    """A job on each worker's queues: diagnostics (default), an image (images), a report."""
    jobs = {}
    response = client.post("/api/v1/diagnostics/jobs", json={"steps": 2, "step_seconds": 0.1})
    assert response.status_code == 202, response.text
    jobs["diagnostics (default)"] = response.json()["job_id"]
    response = client.post("/api/v1/images", files={"file": ("red.png", _png(), "image/png")})
    assert response.status_code == 202, response.text
    jobs["image (images)"] = response.json()["job_id"]
    today = datetime.now(UTC).date()
    body = {
        "kind": "jobs",
        "start": str(today - timedelta(days=7)),
        "end": str(today),
        "format": "csv",
    }
    response = client.post("/api/v1/reports", json=body)
    assert response.status_code == 202, response.text
    jobs["report (reports)"] = response.json()["job_id"]
    consumed = {queue for w in workers for queue in _queues(w.argv)}
    assert {"default", "images", "reports"} <= consumed or not consumed, consumed
    return jobs


def _queues(argv: list[str]) -> list[str]:
    for flag in ("-Q", "--queues"):
        if flag in argv:
            return argv[argv.index(flag) + 1].split(",")
    return []


def _schedule(client: httpx.Client) -> str:
    body = {
        "name": f"deploy-{time.time_ns()}",
        "task": "conveyor.diagnostics.run",
        "kwargs": {"steps": 1, "step_seconds": 0},
        "every_seconds": 2,
    }
    response = client.post("/api/v1/schedules", json=body)
    assert response.status_code in (200, 201), response.text
    schedule_id: str = response.json()["id"]
    return schedule_id


def _schedule_runs(client: httpx.Client, schedule: str, at_least: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/schedules/{schedule}/runs")
    assert response.status_code == 200, response.text
    body = response.json()
    runs: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    runs = [run for run in runs if run.get("job_id")]
    return runs if len(runs) >= at_least else []


def _finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    response = client.get(f"/api/v1/jobs/{job_id}")
    if response.status_code != 200:
        return None
    job: dict[str, Any] = response.json()
    return job if job["state"] in ("succeeded", "failed", "dead", "cancelled") else None


# --- the tests ------------------------------------------------------------------------------


def test_kubernetes_manifests_run_what_they_say(local: Local) -> None:
    services = kubernetes_services()
    assert {s.role for s in services} >= {"migrate", "api", "worker", "scheduler", "beat"}
    assert next(s for s in services if s.role == "scheduler").replicas == 2
    run_system(services, local)


def test_compose_file_runs_what_it_says(local: Local) -> None:
    services = compose_services()
    if not services:
        pytest.skip("no deploy/compose file with service commands (written separately)")
    run_system(services, local)


def test_systemd_units_run_what_they_say(local: Local) -> None:
    services = systemd_services()
    if not services:
        pytest.skip("no deploy/systemd/*.service units (written separately)")
    run_system(services, local)


def test_every_host_is_replaced_by_a_local_one(tmp_path: Path) -> None:
    """The runs above reach nothing of the cluster's: every URL or host in the manifests'
    settings is replaced (a new one would have to be added to Local.env)."""
    local = Local("redis://127.0.0.1:6379/3", "postgresql://u@127.0.0.1/db", tmp_path)
    for service in kubernetes_services():
        env = local.env(service, "pod")
        for key, value in env.items():
            if key.startswith("CONVEYOR_") and "://" in value:
                assert urlsplit(value).hostname == "127.0.0.1", (service.name, key, value)
        if "CONVEYOR_SMTP_HOST" in env:
            assert env["CONVEYOR_SMTP_HOST"] == "127.0.0.1"
