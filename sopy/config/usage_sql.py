"""The usage records' table in SQL, declared once for both places that keep it: the SQLite file
the usage actor owns (`sopy.actors.usage_store`) and PostgreSQL when it is the config store
(`sopy.config.postgres_usage`, which takes these statements through `postgres_sql`). In
SQLite's dialect with `?` placeholders.
"""

from collections.abc import Mapping

from sopy.messages import GetUsage

SCHEMA = (
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
)
COLUMNS = 17
SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


def token_total_sql(cast: str = "") -> str:
    """Input plus output tokens of one key's records from a Unix time on (parameters: key id,
    time); `cast` is appended to the sum (PostgreSQL's `::bigint`)."""
    return (
        f"SELECT COALESCE(SUM(input_tokens + output_tokens), 0){cast} FROM usage_records "
        "WHERE key_id = ? AND at >= ?"
    )


def report_sql(
    command: GetUsage, day: str, cast: str = ""
) -> tuple[str, list[object], tuple[str, ...]]:
    """`get_usage`'s query: its SQL, its parameters and the names of its result columns. `day`
    is the dialect's expression of a record's UTC day; `cast` is appended to each sum."""
    group_columns: Mapping[str, str] = {
        "key_id": "key_id",
        "model": "model",
        "provider": "provider",
        "day": day,
    }
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
            conditions.append(f"{column} {test} ?")
            values.append(value)
    groups = [group_columns[name] for name in command.group_by]
    sums = ", ".join(f"COALESCE(SUM({column}), 0){cast}" for column in SUMS)
    # Every name in the SQL comes from the tables above, never from the command.
    sql = f"SELECT {', '.join([*groups, 'COUNT(*)', sums])} FROM usage_records"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if groups:
        sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(groups)}"
    return sql, values, (*command.group_by, "requests", *SUMS)
