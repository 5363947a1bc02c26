"""Paging query parameters, bounded: an unbounded integer reached the database and was a 500
(an offset above 2^63-1 does not fit a SQL BIGINT); now it is a 422 naming the parameter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

# Deeper than any page a person reads; past it, narrow the listing with its filters.
MAX_OFFSET = 1_000_000

Offset = Annotated[
    int,
    Query(ge=0, le=MAX_OFFSET, description=f"Items to skip, at most {MAX_OFFSET:,}."),
]
