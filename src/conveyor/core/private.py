"""Conveyor's own files, readable by their owner only.

The data directory holds the SQLite ledger (every job's arguments), the runtime file (URLs
with passwords) and stored uploads: on a shared machine none of it is other users' business.
What Conveyor creates is 0700 (directories) or 0600 (files), whatever the umask; what
already exists is left alone, since it may be the user's own.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents, each 0700; existing ones stay as they are."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode passes through the umask
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and 0600 unless it exists, so whatever writes it next (SQLite)
    keeps that mode, and gives it to the files it makes beside it."""
    private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return path
    os.fchmod(descriptor, PRIVATE_FILE)
    os.close(descriptor)
    return path
