"""`conveyor keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from conveyor.cli.render import make_console, when
from conveyor.cli.system import ledger_session
from conveyor.core import api_keys

app = typer.Typer(help="API keys.", no_args_is_help=True)
console = make_console()


@app.command("create")
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A name for the key, e.g. the client using it.")
    ],
    admin: Annotated[bool, typer.Option("--admin", help="See every owner's jobs.")] = False,
    owner: Annotated[
        str | None, typer.Option(metavar="OWNER", help="Owner of what the key creates.")
    ] = None,
) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    with ledger_session() as session:
        new = api_keys.create_key(session, name, owner=owner, admin=admin)
        record = new.record
        console.print(
            f"created {'admin ' if admin else ''}key {record.id} "
            f"(owner {record.owner}); it is shown only now:",
            style="dim",
        )
    print(new.plaintext)


@app.command("list")
def list_keys() -> None:
    """List keys (never the secrets)."""
    table = Table("id", "name", "owner", "prefix", "admin", "created", "last used", "revoked")
    with ledger_session() as session:
        for key in api_keys.list_keys(session):
            table.add_row(
                key.id,
                key.name,
                key.owner,
                key.prefix,
                "yes" if key.is_admin else "",
                when(key.created_at),
                when(key.last_used_at),
                when(key.revoked_at),
            )
    console.print(table)


@app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Key id or prefix.")],
) -> None:
    """Revoke a key; requests with it get 401 at once."""
    with ledger_session() as session:
        record = api_keys.revoke(session, key)
        if record is None:
            console.print(f"[red]no key with id or prefix {key}[/red]")
            raise typer.Exit(1)
    console.print(f"revoked {record.id} ({record.name})")
