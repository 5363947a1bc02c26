"""The Kubernetes manifests (deploy/kubernetes) render, validate and agree with the code.

Each check is a function returning the problems it finds, run on every overlay; the last test
breaks a copy of the manifests in one way per check and asserts that check notices.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import pytest
import typer
import yaml  # type: ignore[import-untyped]

from conveyor.core import workloads
from conveyor.core.brokers import redis_list_keys
from conveyor.core.settings import Settings, use_settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["keda", "hpa"]
# The cluster version the manifests promise to work on: lifecycle.preStop.sleep needs 1.30.
KUBERNETES_VERSION = "1.32.0"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda.sh_scaledobjects_v1alpha1.yaml"
# The CRD's description of metricType; the schema itself has no enum for it.
KEDA_METRIC_TYPES = {"Value", "AverageValue", "Utilization"}
POD_KINDS = {"Deployment", "StatefulSet", "Job"}

Doc = dict[str, Any]
Check = Callable[[list[Doc]], list[str]]


@functools.cache
def _render(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize` renders the manifests")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str) -> list[Doc]:
    """A fresh copy of the overlay's objects, so a test may change them."""
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return render(request.param)


# --- reading the objects ----------------------------------------------------------------


def named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: Doc) -> Iterator[Doc]:
    spec = pod_spec(doc)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads_of(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in POD_KINDS]


def settings_data(docs: list[Doc]) -> dict[str, str]:
    """The ConfigMap's and the Secret's settings together, as a container sees them."""
    data: dict[str, str] = dict(named(docs, "ConfigMap")["conveyor-settings"]["data"])
    data.update(named(docs, "Secret")["conveyor-secrets"]["stringData"])
    return data


def worker_queues(doc: Doc) -> list[str] | None:
    """The -Q queues of a worker Deployment's main container; None for anything else."""
    command = pod_spec(doc)["containers"][0]["command"]
    if command[:2] != ["conveyor", "worker"]:
        return None
    queues: str = command[command.index("-Q") + 1]
    return queues.split(",")


def workers(docs: list[Doc]) -> dict[str, list[str]]:
    found = {}
    for doc in named(docs, "Deployment").values():
        queues = worker_queues(doc)
        if queues is not None:
            found[doc["metadata"]["name"]] = queues
    return found


def command_lines(command: list[str]) -> list[list[str]]:
    """The command lines a container runs: its argv, or each one in an `sh -c` script."""
    if command[:2] != ["sh", "-c"]:
        return [command]
    lines = []
    for part in re.split(r";|\|\||&&|\||\bdo\b|\bdone\b|\buntil\b|\bwhile\b", command[2]):
        words = shlex.split(part)
        if words and words[0] in ("conveyor", "celery"):
            lines.append(words)
    return lines


# --- the checks ---------------------------------------------------------------------------


def check_builtin_kinds(docs: list[Doc]) -> list[str]:
    import kubernetes_validate  # type: ignore[import-untyped]

    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {doc['apiVersion']} in {KUBERNETES_VERSION}")
    return problems


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as kubectl's strict field validation does."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def check_scaled_objects(docs: list[Doc]) -> list[str]:
    schema = _closed(yaml.safe_load(KEDA_SCHEMA.read_text()))
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for name, scaled in named(docs, "ScaledObject").items():
        if scaled["apiVersion"] != "keda.sh/v1alpha1":
            problems.append(f"ScaledObject/{name}: apiVersion {scaled['apiVersion']}")
        for error in validator.iter_errors(scaled):
            problems.append(f"ScaledObject/{name}: {error.message} at {error.json_path}")
        for trigger in scaled["spec"].get("triggers", []):
            metric_type = trigger.get("metricType", "AverageValue")
            if metric_type not in KEDA_METRIC_TYPES:
                problems.append(f"ScaledObject/{name}: metricType {metric_type}")
    return problems


def check_autoscaling(docs: list[Doc]) -> list[str]:
    """Each worker Deployment has one autoscaler, on its backlog and wait time, not CPU."""
    problems = []
    scaled_objects = named(docs, "ScaledObject")
    hpas = named(docs, "HorizontalPodAutoscaler")
    for name, queues in workers(docs).items():
        if name in scaled_objects:
            triggers = scaled_objects[name]["spec"]["triggers"]
            lists = {t["metadata"].get("listName") for t in triggers if t["type"] == "redis"}
            # Conveyor sets no priorities: every job waits in the queue's first broker list.
            wanted = {redis_list_keys(queue)[0] for queue in queues}
            if lists != wanted:
                problems.append(f"{name}: redis triggers watch {lists}, its queues are {wanted}")
            queries = [t["metadata"]["query"] for t in triggers if t["type"] == "prometheus"]
            if not any("conveyor_job_wait_seconds_bucket" in query for query in queries):
                problems.append(f"{name}: no prometheus trigger on conveyor_job_wait_seconds")
            for queue in queues:
                if not any(re.search(rf"\b{queue}\b", query) for query in queries):
                    problems.append(f"{name}: the wait-time query leaves out {queue}")
            problems += _redis_address(docs, name, triggers)
        elif name in hpas:
            metrics = hpas[name]["spec"]["metrics"]
            kinds = {metric["type"] for metric in metrics}
            if kinds != {"External"}:
                problems.append(f"{name}: HPA on {kinds}, not on External queue metrics")
            adapter = (
                KUBERNETES / "overlays" / "hpa" / "prometheus-adapter-values.yaml"
            ).read_text()
            for metric in [metric for metric in metrics if metric["type"] == "External"]:
                external = metric["external"]["metric"]
                if f"as: {external['name']}" not in adapter:
                    problems.append(f"{name}: prometheus-adapter does not serve {external['name']}")
                selected = _selected_queues(external.get("selector", {}))
                if selected != set(queues):
                    problems.append(f"{name}: {external['name']} selects {selected}")
        else:
            problems.append(f"{name}: no ScaledObject or HorizontalPodAutoscaler")
        target = scaled_objects.get(name, hpas.get(name, {})).get("spec", {})
        if target and target.get("scaleTargetRef", {}).get("name") != name:
            problems.append(f"{name}: its autoscaler targets {target.get('scaleTargetRef')}")
    return problems


def _selected_queues(selector: Doc) -> set[str]:
    selected = set(selector.get("matchLabels", {}).values())
    for expression in selector.get("matchExpressions", []):
        if expression["key"] == "queue" and expression["operator"] == "In":
            selected |= set(expression["values"])
    return selected


def _redis_address(docs: list[Doc], name: str, triggers: list[Doc]) -> list[str]:
    """KEDA must read the lists where the workers consume them: the broker's server and db."""
    data = settings_data(docs)
    broker = urlsplit(data.get("CONVEYOR_BROKER_URL") or data["CONVEYOR_REDIS_URL"])
    address = f"{broker.hostname}:{broker.port or 6379}"
    database = (broker.path or "/0").strip("/") or "0"
    problems = []
    for trigger in triggers:
        if trigger["type"] != "redis":
            continue
        meta = trigger["metadata"]
        if (meta.get("address"), meta.get("databaseIndex", "0")) != (address, database):
            problems.append(
                f"{name}: {trigger.get('name')} reads {meta.get('address')} db "
                f"{meta.get('databaseIndex')}; the broker is {address} db {database}"
            )
        variable = meta.get("passwordFromEnv")
        if variable and variable not in _env_names(named(docs, "Deployment")[name]):
            problems.append(f"{name}: {variable} (passwordFromEnv) is not in its environment")
    return problems


def _env_names(doc: Doc) -> set[str]:
    return {item["name"] for item in pod_spec(doc)["containers"][0].get("env", [])}


def check_grace_period(docs: list[Doc]) -> list[str]:
    data = named(docs, "ConfigMap")["conveyor-settings"]["data"]
    if "CONVEYOR_TASK_TIME_LIMIT" not in data:
        return ["CONVEYOR_TASK_TIME_LIMIT is not set in the ConfigMap: the grace period guesses"]
    limit = int(data["CONVEYOR_TASK_TIME_LIMIT"])
    problems = []
    for name in workers(docs):
        grace = pod_spec(named(docs, "Deployment")[name]).get("terminationGracePeriodSeconds", 30)
        if grace <= limit:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} <= time limit {limit}")
    return problems


@functools.cache
def known_variables() -> frozenset[str]:
    fields = set(Settings.model_fields)
    for _, section in workloads.settings_classes():
        fields |= set(section.model_fields)
    return frozenset(f"CONVEYOR_{field.upper()}" for field in fields)


def check_variables(docs: list[Doc]) -> list[str]:
    names = set(settings_data(docs))
    for doc in workloads_of(docs):
        for container in containers(doc):
            names |= {item["name"] for item in container.get("env", [])}
    unknown = {name for name in names if name.startswith("CONVEYOR_")} - known_variables()
    return [f"{name} is not a Conveyor setting" for name in sorted(unknown)]


def manifest_environment(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's CONVEYOR_* variables become the manifests' (until the test ends)."""
    for name in [name for name in os.environ if name.startswith("CONVEYOR_")]:
        monkeypatch.delenv(name)
    for name, value in settings_data(docs).items():
        if name.startswith("CONVEYOR_"):
            monkeypatch.setenv(name, value)


def check_settings_load(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The values parse: every process would start past its settings."""
    manifest_environment(docs, monkeypatch)
    problems = []
    sections: list[Any] = [Settings, *(cls for _, cls in workloads.settings_classes())]
    for section in sections:
        try:
            section(_env_file=None)
        except Exception as exc:
            problems.append(f"{section.__name__}: {exc}")
    return problems


def check_probes(docs: list[Doc], paths: set[str]) -> list[str]:
    problems = []
    for doc in workloads_of(docs):
        for container in containers(doc):
            ports = {port.get("name") for port in container.get("ports", [])}
            ports |= {port["containerPort"] for port in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = container.get(kind, {}).get("httpGet")
                if http is None:
                    continue
                where = f"{doc['metadata']['name']}/{container['name']} {kind}"
                if http["path"] not in paths:
                    problems.append(f"{where}: {http['path']} is not a route of the API")
                if http["port"] not in ports:
                    problems.append(f"{where}: port {http['port']} is not a container port")
    return problems


def check_commands(docs: list[Doc]) -> list[str]:
    """Every command line parses with the real CLI: commands and options exist."""
    from celery.bin.celery import celery as celery_cli

    from conveyor.cli import app

    conveyor_cli = typer.main.get_command(app)
    problems = []
    for doc in workloads_of(docs):
        for container in containers(doc):
            commands = [container["command"]]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind, {}).get("exec")
                if probe is not None:
                    commands.append(probe["command"])
            for command in commands:
                if not command_lines(command):
                    problems.append(f"{command}: runs neither conveyor nor celery")
                for line in command_lines(command):
                    if line[0] == "celery":
                        if line[1:3] != ["-A", "conveyor.worker"]:
                            problems.append(f"{line}: not the Conveyor app (-A conveyor.worker)")
                        problems += _parses(celery_cli, line[3:], line)
                        problems += _remote_action(line[3:], line)
                    else:
                        problems += _parses(conveyor_cli, line[1:], line)
    return problems


def _remote_action(args: list[str], line: list[str]) -> list[str]:
    """`celery inspect|control ACTION`: Celery takes any ACTION and fails only when sent."""
    from celery.worker.control import Panel

    if len(args) < 2 or args[0] not in ("inspect", "control"):
        return []
    known = Panel.meta.get(args[1])
    if known is None or known.type != args[0]:
        return [f"{shlex.join(line)}: no {args[0]} action {args[1]!r}"]
    return []


def _parses(group: Any, args: list[str], line: list[str]) -> list[str]:
    """Resolve the subcommands and parse the options as the CLI would, running nothing.
    Duck-typed: Celery uses click, Typer its own copy of it."""
    command, parent = group, None
    while hasattr(command, "get_command") and args:
        context = command.make_context(command.name, [args[0]], resilient_parsing=True)
        context.parent = parent
        found = command.get_command(context, args[0])
        if found is None:
            return [f"{shlex.join(line)}: no command {args[0]!r}"]
        command, args, parent = found, args[1:], context
    try:
        command.make_context(command.name, list(args), parent=parent)
    except Exception as exc:
        formatted = getattr(exc, "format_message", None)
        message = formatted() if formatted else str(exc)
        return [f"{shlex.join(line)}: {message}"]
    return []


def check_queues_consumed(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every declared queue has exactly one worker Deployment; no worker names another."""
    manifest_environment(docs, monkeypatch)
    declared = workloads.queues(Settings(_env_file=None))
    consumed = [queue for queues in workers(docs).values() for queue in queues]
    problems = [f"queue {q} has no worker" for q in declared if q not in consumed]
    problems += [f"queue {q} is not declared" for q in consumed if q not in declared]
    problems += [
        f"queue {q} has two worker Deployments" for q in set(consumed) if consumed.count(q) > 1
    ]
    return problems


def check_filesystem(docs: list[Doc]) -> list[str]:
    """Non-root on a read-only image, with a volume wherever Conveyor writes."""
    data = settings_data(docs)
    problems = []
    for doc in workloads_of(docs):
        spec = pod_spec(doc)
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{doc['metadata']['name']}: may run as root")
        for container in containers(doc):
            where = f"{doc['metadata']['name']}/{container['name']}"
            if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
                problems.append(f"{where}: writable root filesystem")
            mounted = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            needed = {data["CONVEYOR_DATA_DIR"]}
            if container in spec["containers"]:
                needed.add("/tmp")
            uses_files = container["command"][:2] in (["conveyor", "api"], ["conveyor", "worker"])
            if uses_files and data.get("CONVEYOR_STORAGE_BACKEND", "local") == "local":
                needed.add(data["CONVEYOR_STORAGE_DIR"])
            problems += [f"{where}: nothing writable at {path}" for path in needed - mounted]
    return problems


def check_worker_liveness(docs: list[Doc]) -> list[str]:
    """The hung-worker probe pings this pod's own worker, by the node name Celery gives it."""
    problems = []
    for name in workers(docs):
        probe = pod_spec(named(docs, "Deployment")[name])["containers"][0].get("livenessProbe")
        script = " ".join((probe or {}).get("exec", {}).get("command", []))
        if not re.search(r'inspect ping -d "?celery@\$\(hostname\)"?', script):
            problems.append(f"{name}: no liveness probe pinging celery@$(hostname)")
        elif probe["timeoutSeconds"] <= 10:
            problems.append(f"{name}: probe timeout {probe['timeoutSeconds']} s <= the ping's 10 s")
    return problems


# --- the tests ----------------------------------------------------------------------------


def test_every_overlay_renders_every_part(docs: list[Doc]) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for part in [
        ("Deployment", "conveyor-api"),
        ("Service", "conveyor-api"),
        ("Deployment", "conveyor-worker-images"),
        ("Deployment", "conveyor-worker-general"),
        ("Deployment", "conveyor-scheduler"),
        ("StatefulSet", "conveyor-beat"),
        ("Job", "conveyor-migrate"),
        ("ConfigMap", "conveyor-settings"),
        ("Secret", "conveyor-secrets"),
    ]:
        assert part in kinds
    assert named(docs, "Deployment")["conveyor-scheduler"]["spec"]["replicas"] == 2
    assert named(docs, "StatefulSet")["conveyor-beat"]["spec"]["replicas"] == 1
    budgets = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for doc in named(docs, "PodDisruptionBudget").values()
    }
    assert budgets == {"api", "worker-images", "worker-general", "scheduler"}


def test_builtin_kinds_are_valid_kubernetes(docs: list[Doc]) -> None:
    assert check_builtin_kinds(docs) == []


def test_scaled_objects_match_the_keda_crd() -> None:
    docs = render("keda")
    assert len(named(docs, "ScaledObject")) == 2
    assert check_scaled_objects(docs) == []


def test_workers_scale_on_queue_backlog_and_wait(docs: list[Doc]) -> None:
    assert check_autoscaling(docs) == []


def test_grace_period_outlasts_the_longest_task(docs: list[Doc]) -> None:
    assert check_grace_period(docs) == []


def test_every_variable_is_a_setting_and_parses(
    docs: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_variables(docs) == []
    assert check_settings_load(docs, monkeypatch) == []


def test_probe_paths_are_routes_of_the_api(docs: list[Doc]) -> None:
    assert check_probes(docs, api_paths()) == []


def test_command_lines_parse_with_the_real_cli(docs: list[Doc]) -> None:
    assert check_commands(docs) == []


def test_every_queue_has_one_worker(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_queues_consumed(docs, monkeypatch) == []


def test_read_only_non_root_with_writable_volumes(docs: list[Doc]) -> None:
    assert check_filesystem(docs) == []


def test_worker_liveness_pings_its_own_node(docs: list[Doc]) -> None:
    assert check_worker_liveness(docs) == []


@functools.cache
def api_paths() -> set[str]:
    """The routes of the app `conveyor api` serves, from its OpenAPI document: building the
    app opens no connection, so any URLs do."""
    with tempfile.TemporaryDirectory() as data_dir, pytest.MonkeyPatch.context() as patch:
        # Importing the API prepares the metrics directory: a temporary one, not ./.conveyor.
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", f"{data_dir}/metrics")
        from conveyor.api.app import create_app

        settings = Settings(
            _env_file=None,
            redis_url="redis://127.0.0.1:6379/0",
            database_url=f"sqlite:///{data_dir}/conveyor.db",
            data_dir=Path(data_dir),
        )
        try:
            return set(create_app(settings).openapi()["paths"])
        finally:
            # Building the app makes its settings the process's: later tests read their own.
            use_settings(None)


def _deployment(docs: list[Doc], name: str) -> Doc:
    return named(docs, "Deployment")[name]


def test_every_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break a copy of the manifests once per check: each check must report it."""

    def broken(change: Callable[[list[Doc]], object], overlay: str = "keda") -> list[Doc]:
        docs = copy.deepcopy(render(overlay))
        change(docs)
        return docs

    def images(docs: list[Doc]) -> Doc:
        return pod_spec(_deployment(docs, "conveyor-worker-images"))

    def config(docs: list[Doc]) -> dict[str, str]:
        data: dict[str, str] = named(docs, "ConfigMap")["conveyor-settings"]["data"]
        return data

    def scaled(docs: list[Doc]) -> Doc:
        spec: Doc = named(docs, "ScaledObject")["conveyor-worker-images"]["spec"]
        return spec

    cases: list[tuple[str, Check, Callable[[list[Doc]], object]]] = [
        (
            "unknown field",
            check_builtin_kinds,
            lambda d: images(d)["containers"][0].update(terminationGraceSeconds=5),
        ),
        ("wrong type", check_builtin_kinds, lambda d: images(d).update(replicas="two")),
        ("ScaledObject typo", check_scaled_objects, lambda d: scaled(d).update(maxReplicas=3)),
        (
            "trigger without type",
            check_scaled_objects,
            lambda d: scaled(d)["triggers"][0].pop("type"),
        ),
        (
            "metricType",
            check_scaled_objects,
            lambda d: scaled(d)["triggers"][1].update(metricType="Average"),
        ),
        (
            "wrong list",
            check_autoscaling,
            lambda d: scaled(d)["triggers"][0]["metadata"].update(listName="image"),
        ),
        (
            "wrong redis db",
            check_autoscaling,
            lambda d: scaled(d)["triggers"][0]["metadata"].update(databaseIndex="1"),
        ),
        ("no wait trigger", check_autoscaling, lambda d: scaled(d)["triggers"].pop(1)),
        (
            "grace period",
            check_grace_period,
            lambda d: images(d).update(terminationGracePeriodSeconds=360),
        ),
        (
            "time limit unset",
            check_grace_period,
            lambda d: config(d).pop("CONVEYOR_TASK_TIME_LIMIT"),
        ),
        (
            "unknown setting",
            check_variables,
            lambda d: config(d).update(CONVEYOR_TASK_TIMELIMIT="10"),
        ),
        (
            "unknown env",
            check_variables,
            lambda d: images(d)["containers"][0]["env"].append({"name": "CONVEYOR_X", "value": ""}),
        ),
        (
            "wrong command",
            check_commands,
            lambda d: images(d)["containers"][0].update(command=["conveyor", "workers"]),
        ),
        (
            "wrong option",
            check_commands,
            lambda d: images(d)["containers"][0]["command"].extend(["--prefetch", "4"]),
        ),
        (
            "wrong celery subcommand",
            check_commands,
            lambda d: images(d)["containers"][0]["livenessProbe"]["exec"]["command"].__setitem__(
                2, "celery -A conveyor.worker inspect pong --timeout 10"
            ),
        ),
        (
            "queue without worker",
            lambda d: check_queues_consumed(d, monkeypatch),
            lambda d: images(d)["containers"][0]["command"].__setitem__(3, "email"),
        ),
        (
            "writable root",
            check_filesystem,
            lambda d: images(d)["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        ),
        (
            "no data volume",
            check_filesystem,
            lambda d: images(d)["containers"][0]["volumeMounts"].pop(0),
        ),
        ("root", check_filesystem, lambda d: images(d)["securityContext"].pop("runAsNonRoot")),
        (
            "probe of another node",
            check_worker_liveness,
            lambda d: images(d)["containers"][0]["livenessProbe"]["exec"]["command"].__setitem__(
                2, "celery -A conveyor.worker inspect ping --timeout 10"
            ),
        ),
    ]
    for what, check, change in cases:
        assert check(broken(change)), f"{check.__name__} missed: {what}"

    hpa = broken(
        lambda d: named(d, "HorizontalPodAutoscaler")["conveyor-worker-images"]["spec"][
            "metrics"
        ].append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            }
        ),
        "hpa",
    )
    assert check_autoscaling(hpa), "check_autoscaling missed: an HPA on CPU"
    ready = broken(
        lambda d: pod_spec(_deployment(d, "conveyor-api"))["containers"][0]["readinessProbe"][
            "httpGet"
        ].update(path="/health/readiness")
    )
    assert check_probes(ready, api_paths()), "check_probes missed: a wrong path"
    bad_value = broken(lambda d: config(d).update(CONVEYOR_TASK_TIME_LIMIT="six minutes"))
    assert check_settings_load(bad_value, monkeypatch), "check_settings_load missed a bad value"
