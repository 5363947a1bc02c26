"""What every report kind produces: typed columns, detail rows in chunks, summary rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, cast

from sqlalchemy import Connection

from conveyor.workloads.reports.period import Period

Row = tuple[Any, ...]


class Type(StrEnum):
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    DATE = "date"
    DATETIME = "datetime"


@dataclass(frozen=True)
class Column:
    name: str
    type: Type = Type.TEXT


@dataclass(frozen=True)
class Chart:
    """A column chart of the summary: one bar per row, labelled by `label`, one series each."""

    title: str
    label: str
    series: tuple[str, ...]


class Summary(Protocol):
    def add(self, rows: Sequence[Row]) -> None: ...

    def finish(self, connection: Connection) -> list[Row]: ...


class Definition(Protocol):
    """One report kind. `chunks` streams detail rows; the summary sees each chunk once."""

    @property
    def kind(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def workload(self) -> str | None:
        """The workload whose tables it reads; None for the job system's own tables."""
        ...

    @property
    def columns(self) -> tuple[Column, ...]: ...

    @property
    def summary_columns(self) -> tuple[Column, ...]: ...

    @property
    def chart(self) -> Chart: ...

    def chunks(
        self, connection: Connection, period: Period, owner: str | None, size: int
    ) -> Iterator[list[Row]]: ...

    def summary(self, period: Period, owner: str | None, size: int) -> Summary: ...


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stream(connection: Connection, statement: Any, size: int) -> Iterator[list[Row]]:
    """Rows of a SELECT in chunks of `size` through a server-side cursor where there is one."""
    result = connection.execution_options(stream_results=True, yield_per=size).execute(statement)
    for partition in result.partitions(size):
        # Rows unpack and index like tuples; copying each into one would cost a second.
        yield cast(list[Row], partition)
