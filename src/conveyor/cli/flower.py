"""`conveyor flower`: Flower, Celery's web monitor, on Conveyor's Celery app."""

from __future__ import annotations

import errno
import importlib
import socket
from types import ModuleType
from typing import Annotated

import typer

MISSING_EXTRA = 'conveyor flower needs the flower extra: pip install "conveyor[flower]"'
DEFAULT_PORT = 5555
DEFAULT_ADDRESS = "127.0.0.1"


def _flower_command() -> ModuleType | None:
    """Flower's `celery flower` module, or None when the extra is not installed."""
    try:
        # The package first: `flower.command` may be cached even where `flower` is not.
        importlib.import_module("flower")
        return importlib.import_module("flower.command")
    except ImportError:
        return None


def _bind_error(address: str, port: int) -> str | None:
    """Why Flower could not listen on address:port, or None if it can."""
    try:
        infos = socket.getaddrinfo(
            address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"--address {address}: {exc.strerror}"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As Tornado binds: a port in TIME_WAIT is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} on {address} is taken; choose another with --port"
                return f"cannot listen on {address}:{port}: {exc.strerror}; check --address"
    return None


def _check_basic_auth(value: str | None) -> str | None:
    if value is None:
        return None
    for pair in value.split(","):
        user, colon, _ = pair.partition(":")
        if not user or not colon:
            raise typer.BadParameter("give USER:PASSWORD (several: comma-separated)")
    return value


def flower(
    port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="Port of the web UI.")
    ] = DEFAULT_PORT,
    address: Annotated[
        str,
        typer.Option(metavar="ADDRESS", help="Address to listen on; 0.0.0.0 is every interface."),
    ] = DEFAULT_ADDRESS,
    basic_auth: Annotated[
        str | None,
        typer.Option(
            "--basic-auth",
            metavar="USER:PASSWORD",
            callback=_check_basic_auth,
            help="Require HTTP basic auth (FLOWER_BASIC_AUTH keeps it out of `ps`). "
            "Flower's JSON API answers only with it.",
        ),
    ] = None,
) -> None:
    """Run Flower on Conveyor's broker, with task events switched on in the workers."""
    command = _flower_command()
    if command is None:
        typer.echo(MISSING_EXTRA, err=True)
        raise typer.Exit(2)
    problem = _bind_error(address, port)
    if problem is not None:
        typer.echo(f"conveyor flower: {problem}", err=True)
        raise typer.Exit(2)

    from celery.bin.celery import celery as celery_cli

    from conveyor.core.celery_app import get_celery

    # Flower registers `celery flower` through an entry point; add it if that is missing.
    if "flower" not in celery_cli.commands:
        celery_cli.add_command(command.flower)
    # Events are Flower's default; say so, so FLOWER_ENABLE_EVENTS=false cannot blind it.
    argv = ["flower", f"--port={port}", f"--address={address}", "--enable_events=true"]
    if basic_auth:
        argv.append(f"--basic_auth={basic_auth}")
    get_celery().start(argv)
