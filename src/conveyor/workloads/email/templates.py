"""The template registry: Jinja2 templates on disk, rendered at submit time.

A template is a folder named after it, holding `subject.txt`, `html.html`, optionally
`text.txt` (else the text part is made from the HTML) and `sample.json` (the context
the preview uses). Folders starting with "_" hold layouts and partials for `{% extends %}`
and `{% include %}`. CONVEYOR_EMAIL_TEMPLATES_DIR is searched before the built-in folder,
so an application can override `welcome` or the layout by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)

from conveyor.core.settings import section
from conveyor.workloads.email.errors import InvalidInput
from conveyor.workloads.email.html_text import html_to_text
from conveyor.workloads.email.settings import EmailSettings

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_UNDEFINED = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


class RenderError(InvalidInput):
    """A template that cannot be rendered with this context; `field` says where."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def _autoescape(name: str | None) -> bool:
    # HTML is escaped; the subject and the text part are plain text and must not be.
    return bool(name and name.endswith((".html", ".htm")))


class TemplateRegistry:
    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories
        self.env = Environment(
            loader=FileSystemLoader([str(path) for path in directories]),
            # HTML parts are escaped; subject and text are plain text, not markup.
            autoescape=_autoescape,  # noqa: S701
            undefined=StrictUndefined,
            auto_reload=True,
        )

    def names(self) -> list[str]:
        found: set[str] = set()
        for directory in self.directories:
            if directory.is_dir():
                for entry in directory.iterdir():
                    if NAME.fullmatch(entry.name) and (entry / "html.html").is_file():
                        found.add(entry.name)
        return sorted(found)

    def exists(self, name: str) -> bool:
        return bool(NAME.fullmatch(name)) and self._find(name, "html.html") is not None

    def _find(self, name: str, part: str) -> Path | None:
        for directory in self.directories:
            path = directory / name / part
            if path.is_file():
                return path
        return None

    def sample(self, name: str) -> dict[str, Any]:
        self._check(name)
        path = self._find(name, "sample.json")
        if path is None:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def _check(self, name: str) -> None:
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise RenderError("template", f"unknown template {name!r} (known: {known})")

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        """Subject, HTML and text of template `name`; RenderError names what is wrong."""
        self._check(name)
        subject = self._render(f"{name}/subject.txt", context).strip()
        if "\r" in subject or "\n" in subject:
            # A line break from the context would end the Subject header: refuse it.
            raise RenderError("subject", "the rendered subject contains a line break")
        html = self._render(f"{name}/html.html", {**context, "subject": subject})
        if self._find(name, "text.txt") is not None:
            text = self._render(f"{name}/text.txt", {**context, "subject": subject})
        else:
            text = html_to_text(html)
        if not subject:
            raise RenderError("template", f"template {name!r} renders an empty subject")
        return Rendered(subject=subject, html=html, text=text)

    def _render(self, path: str, context: dict[str, Any]) -> str:
        try:
            return self.env.get_template(path).render(context)
        except UndefinedError as exc:
            match = _UNDEFINED.search(str(exc))
            variable = next((group for group in match.groups() if group), None) if match else None
            where = f"context.{variable}" if variable else "context"
            raise RenderError(where, f"missing variable ({exc})") from None
        except TemplateNotFound as exc:
            raise RenderError("template", f"{path} uses a missing template {exc}") from None
        except TemplateSyntaxError as exc:
            raise RenderError("template", f"{path} line {exc.lineno}: {exc.message}") from None
        except TemplateError as exc:
            raise RenderError("template", f"{path}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            # An operation the context's values do not support ("abc" * {}...).
            raise RenderError("context", f"{path}: {exc}") from None


def template_dirs(settings: EmailSettings) -> list[Path]:
    custom = [settings.email_templates_dir] if settings.email_templates_dir else []
    return [*custom, BUILTIN_DIR]


@lru_cache(maxsize=4)
def _registry(directories: tuple[Path, ...]) -> TemplateRegistry:
    return TemplateRegistry(list(directories))


def get_registry(settings: EmailSettings | None = None) -> TemplateRegistry:
    return _registry(tuple(template_dirs(settings or section(EmailSettings))))
