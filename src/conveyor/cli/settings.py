"""`conveyor settings`: every setting this machine uses, secrets masked."""

from __future__ import annotations

from itertools import groupby
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from conveyor.cli.render import AsJson, make_console, print_json
from conveyor.core import settings_docs
from conveyor.core.settings import get_settings

CHANGED_STYLE = "bold yellow"


def settings(
    changed: Annotated[
        bool, typer.Option("--changed", help="Only settings whose value is not the default.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print docs/settings.md (defaults only) instead.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Show every setting: variable, value (secrets masked), default and what it does."""
    if markdown:
        typer.echo(settings_docs.markdown(), nl=False)
        return
    console = make_console()
    docs = [doc for doc in settings_docs.describe(get_settings()) if doc.changed or not changed]
    if as_json:
        print_json([_as_json(doc) for doc in docs])
        return
    if not docs:
        console.print("every setting has its default value", style="dim")
        return
    for group, rows in groupby(docs, key=lambda doc: doc.group):
        table = Table(title=group, title_justify="left", title_style="bold")
        table.add_column("variable", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("default", overflow="fold", style="dim")
        table.add_column("description")
        for doc in rows:
            # Text, not markup: values such as "Conveyor <noreply@...>" or JSON stay literal.
            value = Text(doc.value, style=CHANGED_STYLE if doc.changed else "")
            table.add_row(doc.variable, value, Text(doc.default), Text(doc.description))
        console.print(table)


def _as_json(doc: settings_docs.SettingDoc) -> dict[str, object]:
    """A table row as JSON, values as shown (secrets masked); unset is null, not a dash."""

    def shown(text: str) -> str | None:
        return None if text == settings_docs.UNSET else text

    return {
        "group": doc.group,
        "variable": doc.variable,
        "value": shown(doc.value),
        "default": shown(doc.default),
        "description": doc.description,
        "changed": doc.changed,
    }
