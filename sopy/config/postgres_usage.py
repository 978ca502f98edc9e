"""The usage records in PostgreSQL, when it is the config store (`--store postgresql://...`):
one table for every instance, so `get_usage` and the keys' budget counts see them all.

Only the usage actor (`sopy.actors.usage_store`) uses this, from its worker thread, as it uses
the SQLite file otherwise: the same table and queries (`sopy.config.usage_sql`, as
`postgres_sql` gives them), a batch written by one `INSERT ... SELECT` from its rows sent as one
JSON array. A call that finds the connection gone reconnects first; a batch PostgreSQL refuses is
kept by the actor and written at a later flush.
"""

from collections.abc import Mapping
from typing import Any

import orjson
import psycopg

from sopy.config import usage_sql
from sopy.config.postgres_store import new_connection, postgres_sql
from sopy.config.store_url import redacted
from sopy.messages import GetUsage, UsageReport

_SCHEMA = (
    *usage_sql.SCHEMA,
    "CREATE INDEX IF NOT EXISTS usage_records_key_at ON usage_records (key_id, at)",
)
# Each column's value in the JSON row `r` (SQLite's `value ->> n`), in the table's order.
_ROW_VALUES = (
    "(r ->> 0)::float8",
    "r ->> 1",
    "(r ->> 2)::bigint",
    "r ->> 3",
    "r ->> 4",
    "r ->> 5",
    "r ->> 6",
    "(r ->> 7)::bigint",
    "(r ->> 8)::bigint",
    "(r ->> 9)::bigint",
    "(r ->> 10)::bigint",
    "(r ->> 11)::bigint",
    "(r ->> 12)::boolean::int",
    "(r ->> 13)::float8",
    "(r ->> 14)::float8",
    "(r ->> 15)::boolean::int",
    "(r ->> 16)::boolean::int",
)
# A record's UTC day, as `get_usage` groups by it.
_DAY = "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_INSERT_ROWS = (
    f"INSERT INTO usage_records SELECT {', '.join(_ROW_VALUES)} "
    "FROM jsonb_array_elements(%s::jsonb) AS r"
)


class PostgresUsage:
    """The usage records in the config store's PostgreSQL database."""

    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        self._url = url
        self.where = redacted(url)
        self._connection: psycopg.Connection[Any] | None = None
        connection = self._live()
        with connection.transaction():
            for statement in _SCHEMA:
                connection.execute(postgres_sql(statement))

    def write(self, values: list[object], oldest: float) -> None:
        rows = [
            values[start : start + usage_sql.COLUMNS]
            for start in range(0, len(values), usage_sql.COLUMNS)
        ]
        connection = self._live()
        with connection.transaction():
            if rows:
                connection.execute(_INSERT_ROWS, (orjson.dumps(rows).decode(),))
            connection.execute("DELETE FROM usage_records WHERE at < %s", (oldest,))

    def token_totals(self, since: Mapping[int, float]) -> dict[int, int]:
        connection = self._live()
        sql = postgres_sql(usage_sql.token_total_sql(cast="::bigint"))
        totals = {}
        for key_id, start in since.items():
            row = connection.execute(sql, (key_id, start)).fetchone()
            totals[key_id] = 0 if row is None else int(row[0])
        return totals

    def report(self, command: GetUsage) -> UsageReport:
        sql, values, names = usage_sql.report_sql(command, day=_DAY, cast="::bigint")
        rows = self._live().execute(postgres_sql(sql), values).fetchall()
        return UsageReport(tuple(dict(zip(names, row, strict=True)) for row in rows))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _live(self) -> "psycopg.Connection[Any]":
        if self._connection is None or self._connection.closed or self._connection.broken:
            self.close()
            self._connection = new_connection(self._url)
        return self._connection
