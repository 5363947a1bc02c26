"""Conveyor's table, index and constraint names before and after revision 0010 prefixed them.

An install made before 0010 keeps the unprefixed names until 0010 renames them; a newer one
has the prefixed names from its first revision on, so it never needs an application's `jobs`
table or `ix_jobs_*` index names. The revisions before 0010 therefore run on either naming:
`names()` tells which one the tables already here have. Frozen with those revisions.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

PREFIX = "conveyor_"
# Named constraints and indexes keep their kind first: ix_conveyor_jobs_state_created.
_KINDS = ("ix_", "uq_", "ck_", "fk_", "pk_")


def prefixed(name: str) -> str:
    """jobs -> conveyor_jobs, ix_jobs_parent -> ix_conveyor_jobs_parent, jobs_pkey ->
    conveyor_jobs_pkey (the name PostgreSQL gives the prefixed table's key)."""
    if name.startswith(PREFIX) or f"_{PREFIX}" in name:
        return name
    for kind in _KINDS:
        if name.startswith(kind):
            return kind + PREFIX + name[len(kind) :]
    return PREFIX + name


def unprefixed(name: str) -> str:
    return name.replace(PREFIX, "", 1)


def unchanged(name: str) -> str:
    return name


def names() -> Callable[[str], str]:
    """Maps an unprefixed name to the one this database uses: prefixed unless the tables here
    were made before revision 0010 (`jobs` is in every revision, so it tells)."""
    if sa.inspect(op.get_bind()).has_table(prefixed("jobs")):
        return prefixed
    return unchanged
