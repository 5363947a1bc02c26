"""`conveyor keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from conveyor.cli.render import AsJson, make_console, print_json, when
from conveyor.cli.system import ledger_session
from conveyor.core import api_keys
from conveyor.core.ledger import iso

app = typer.Typer(help="API keys.", no_args_is_help=True)
console = make_console()
errors = make_console(stderr=True)


@app.command("create")
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A name for the key, e.g. the client using it.")
    ],
    admin: Annotated[bool, typer.Option("--admin", help="See every owner's jobs.")] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            metavar="OWNER",
            help=(
                "Add the key to this owner (an existing one shares its jobs and idempotency"
                " keys). Default: a new owner of its own."
            ),
        ),
    ] = None,
) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    with ledger_session() as session:
        try:
            new = api_keys.create_key(session, name, owner=owner, admin=admin)
        except api_keys.OwnerConflict as exc:
            errors.print(
                f"[red]--owner {escape(exc.owner)}: {escape(str(exc))}; leave out --owner to give"
                " the key an owner of its own[/red]",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        except ValueError as exc:
            errors.print(f"[red]--owner: {escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        record = new.record
        what = "an admin key" if admin else "a key"
        verb = "added" if new.existing_owner else "created"
        whose = "the existing owner" if new.existing_owner else "the new owner"
        console.print(
            f"{verb} {what} for {whose} {record.owner}: {record.id} named {record.name};"
            " it is shown only now:",
            style="dim",
            highlight=False,
        )
    print(new.plaintext)


@app.command("list")
def list_keys(as_json: AsJson = False) -> None:
    """List keys (never the secrets)."""
    table = Table("id", "name", "owner", "prefix", "admin", "created", "last used", "revoked")
    with ledger_session() as session:
        records = api_keys.list_keys(session)
        if as_json:
            # Named fields, never the whole row: the row holds the key's hash.
            print_json(
                [
                    {
                        "id": key.id,
                        "name": key.name,
                        "owner": key.owner,
                        "prefix": key.prefix,
                        "admin": key.is_admin,
                        "created_at": iso(key.created_at),
                        "last_used_at": iso(key.last_used_at),
                        "revoked_at": iso(key.revoked_at),
                    }
                    for key in records
                ]
            )
            return
        for key in records:
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
