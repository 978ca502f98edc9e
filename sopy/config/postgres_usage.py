"""The usage records in PostgreSQL, when it is the config store (`--store postgresql://...`):
one table for every instance, so `get_usage` and the keys' budget counts see them all.

Only the usage actor (`sopy.actors.usage_store`) uses this, from its worker thread, as it uses
the SQLite file otherwise: the same table and columns (types as `postgres_sql` gives them), a
batch written by one `INSERT ... SELECT` from its rows sent as one JSON array, the same report
queries. A call that finds the connection gone reconnects first; a batch PostgreSQL refuses is
kept by the actor and written at a later flush.
"""

from collections.abc import Mapping
from typing import Any

import orjson
import psycopg

from sopy.config.postgres_store import new_connection, postgres_sql
from sopy.config.store_url import redacted
from sopy.messages import GetUsage, UsageReport

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS usage_records (
        at REAL NOT NULL,
        request_id TEXT NOT NULL,
        key_id INTEGER,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        backend TEXT,
        route TEXT NOT NULL,
        status INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        tokens_from_provider INTEGER NOT NULL,
        upstream_ms REAL NOT NULL,
        first_token_ms REAL,
        client_gone INTEGER NOT NULL,
        cut_short INTEGER NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS usage_records_at ON usage_records (at)",
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
_COLUMNS = len(_ROW_VALUES)
_INSERT_ROWS = (
    f"INSERT INTO usage_records SELECT {', '.join(_ROW_VALUES)} "
    "FROM jsonb_array_elements(%s::jsonb) AS r"
)
_GROUP_COLUMNS: Mapping[str, str] = {
    "key_id": "key_id",
    "model": "model",
    "provider": "provider",
    "day": "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


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
        rows = [values[start : start + _COLUMNS] for start in range(0, len(values), _COLUMNS)]
        connection = self._live()
        with connection.transaction():
            if rows:
                connection.execute(_INSERT_ROWS, (orjson.dumps(rows).decode(),))
            connection.execute("DELETE FROM usage_records WHERE at < %s", (oldest,))

    def token_totals(self, since: Mapping[int, float]) -> dict[int, int]:
        connection = self._live()
        totals = {}
        for key_id, start in since.items():
            row = connection.execute(
                "SELECT COALESCE(SUM(input_tokens + output_tokens), 0)::bigint "
                "FROM usage_records WHERE key_id = %s AND at >= %s",
                (key_id, start),
            ).fetchone()
            totals[key_id] = 0 if row is None else int(row[0])
        return totals

    def report(self, command: GetUsage) -> UsageReport:
        conditions: list[str] = []
        values: list[object] = []
        for column, value, test in (
            ("key_id", command.key_id, "="),
            ("model", command.model, "="),
            ("provider", command.provider, "="),
            ("at", command.since, ">="),
            ("at", command.until, "<"),
        ):
            if value is not None:
                conditions.append(f"{column} {test} %s")
                values.append(value)
        groups = [_GROUP_COLUMNS[name] for name in command.group_by]
        sums = ", ".join(f"COALESCE(SUM({column}), 0)::bigint" for column in _SUMS)
        # Every name in the SQL comes from the tables above, never from the command.
        sql = f"SELECT {', '.join([*groups, 'COUNT(*)', sums])} FROM usage_records"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        if groups:
            sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
        names = (*command.group_by, "requests", *_SUMS)
        rows = self._live().execute(sql, values).fetchall()
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
