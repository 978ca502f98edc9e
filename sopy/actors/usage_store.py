"""The usage actor: the only owner of `sopy_usage.db`, the record of every model request's
token usage (`UsageRecord`).

The HTTP front notes records in the `UsageLedger` without waiting; every `FLUSH_INTERVAL`
seconds, and once more when it is stopped, this actor writes the records noted since in one
transaction on its own worker thread, and deletes those older than the retention. A write the
file refuses (locked, disk full, read-only) is kept and retried at the next flush. It answers
`get_usage` (`UsageQuery`, from the admin transports) after writing what is pending, so an
answer counts every request finished before it was asked; and, likewise, the HTTP front's
`TokenTotalsQuery` before it serves (the tokens each key with a budget used since its count
began, `sopy.routing.key_limits`).

The file lives beside the config database, under the same private-file rules
(`sopy.runtime.private_files`). With `--store postgresql://...` the records go to that database
instead (`sopy.config.postgres_usage`), where `get_usage` on any instance counts every
instance's requests; the actor works the same on either (`UsageDatabase`).
"""

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from sopy.config import usage_sql
from sopy.errors import InternalError
from sopy.messages import (
    CommandFailed,
    CommandReply,
    CommandSucceeded,
    GetUsage,
    TokenTotalsQuery,
    UsageRecord,
    UsageReport,
    UsageRequest,
)
from sopy.runtime.private_files import open_private_database
from sopy.runtime.usage_ledger import UsageLedger

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
DATABASE_NAME = "sopy_usage.db"
SECONDS_PER_DAY = 24 * 3600


def usage_database_path(config_database: Path) -> Path:
    return config_database.parent / DATABASE_NAME


class UsageDatabase(Protocol):
    """Where the records are kept; every call runs on the actor's worker thread."""

    # What its calls raise when the storage fails (the actor keeps or reports, never crashes).
    errors: tuple[type[Exception], ...]
    # Where the records are, as the log names it.
    where: str

    def write(self, values: list[object], oldest: float) -> None:
        """Append the rows whose column values are `values`, row after row in the table's
        column order, and delete the records older than `oldest`, in one transaction."""

    def token_totals(self, since: Mapping[int, float]) -> dict[int, int]: ...

    def report(self, command: GetUsage) -> UsageReport: ...

    def close(self) -> None: ...


class SqliteUsage:
    """The records in `sopy_usage.db`."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: Path) -> None:
        self._connection = open_private_database(path, "usage database", usage_sql.SCHEMA)
        self.where = str(path)

    def write(self, values: list[object], oldest: float) -> None:
        _write(self._connection, values, oldest)

    def token_totals(self, since: Mapping[int, float]) -> dict[int, int]:
        return _token_totals(self._connection, since)

    def report(self, command: GetUsage) -> UsageReport:
        return _report(self._connection, command)

    def close(self) -> None:
        self._connection.close()


OpenUsageDatabase = Callable[[], UsageDatabase]


class UsageStore:
    def __init__(
        self,
        path: Path,
        ledger: UsageLedger,
        inbox: trio.MemoryReceiveChannel[UsageRequest],
        retention_days: float,
        open_database: OpenUsageDatabase | None = None,
    ) -> None:
        """`open_database` opens where the records go (default: the SQLite file at `path`)."""
        self._open = open_database or (lambda: SqliteUsage(path))
        self._ledger = ledger
        self._inbox = inbox
        self._retention = retention_days * SECONDS_PER_DAY
        self._database_calls = trio.CapacityLimiter(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        database = await trio.to_thread.run_sync(self._open, limiter=self._database_calls)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._answer_queries, database)
                task_status.started()
                while True:
                    await trio.sleep(FLUSH_INTERVAL)
                    await self._flush(database)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush(database)
                await trio.to_thread.run_sync(database.close, limiter=self._database_calls)

    async def _answer_queries(self, database: UsageDatabase) -> None:
        async for query in self._inbox:
            await self._flush(database)
            if isinstance(query, TokenTotalsQuery):
                await self._answer_totals(database, query)
                continue
            reply: CommandReply
            try:
                report = await trio.to_thread.run_sync(
                    database.report, query.command, limiter=self._database_calls
                )
                reply = CommandSucceeded(report)
            except database.errors as exc:
                reply = CommandFailed(
                    InternalError(f"could not read the usage database {database.where}: {exc}")
                )
            try:
                query.reply_to.send_nowait(reply)
            except (trio.BrokenResourceError, trio.WouldBlock):
                log.debug("a get_usage caller left before its answer")

    async def _answer_totals(self, database: UsageDatabase, query: TokenTotalsQuery) -> None:
        """Answered with what can be read: a key whose total cannot be read counts from 0,
        which the log says."""
        try:
            totals = await trio.to_thread.run_sync(
                database.token_totals, query.since, limiter=self._database_calls
            )
        except database.errors as exc:
            log.error(
                "could not read the usage database %s to count the keys' token budgets (%s); "
                "they count from 0 until the next start",
                database.where,
                exc,
            )
            totals = {}
        try:
            query.reply_to.send_nowait(totals)
        except (trio.BrokenResourceError, trio.WouldBlock):
            log.debug("the HTTP front left before its token totals")

    async def _flush(self, database: UsageDatabase) -> None:
        """Write the records noted since the last write and forget those past the retention; if
        the file cannot take them, keep them for the next try instead of losing them."""
        records = self._ledger.take_pending()
        try:
            await trio.to_thread.run_sync(
                database.write,
                _row_values(records),
                time.time() - self._retention,
                limiter=self._database_calls,
            )
        except database.errors as exc:
            self._ledger.give_back(records)
            log.warning(
                "could not write %d usage records to %s (%s); they are kept in memory and "
                "written again in %g s",
                len(records),
                database.where,
                exc,
                FLUSH_INTERVAL,
            )


def _row_values(records: list[UsageRecord]) -> list[object]:
    """The records' column values, row after row in the table's column order: gathered on the
    event loop's thread, so that the writing thread only binds and steps (`_write`)."""
    values: list[object] = []
    for record in records:
        tokens = record.tokens
        values += (
            record.at,
            record.request_id,
            record.key_id,
            record.model,
            record.provider,
            record.backend,
            record.route,
            record.status,
            tokens.input_tokens,
            tokens.output_tokens,
            tokens.cached_input_tokens,
            tokens.reasoning_tokens,
            record.tokens_from_provider,
            record.upstream_ms,
            record.first_token_ms,
            record.client_gone,
            record.cut_short,
        )
    return values


# Rows per INSERT statement, largest first (17 values each, under SQLite's 32766 variables).
# Python's sqlite3 gives up the GIL while a statement runs and takes it back after: row by row
# (executemany), the writing thread took it back for every row and each handover stalled the
# event loop's thread, which cost the request path more CPU than the writing itself; a thousand
# rows per statement make that one handover per thousand. A batch is cut into statements of
# these sizes only (2,537 rows: 2 x 1000, 5 x 100, 3 x 10, 7 x 1), so the connection's cache
# holds four prepared statements: one per batch size would fill it with large ones (tens of MB).
STATEMENT_ROWS = (1000, 100, 10, 1)


def _insert_rows(rows: int) -> str:
    return "INSERT INTO usage_records VALUES " + ", ".join(
        ["(" + ", ".join("?" * usage_sql.COLUMNS) + ")"] * rows
    )


_INSERTS = {rows: _insert_rows(rows) for rows in STATEMENT_ROWS}


def _write(database: sqlite3.Connection, values: list[object], oldest: float) -> None:
    database.execute("BEGIN")
    try:
        start = 0
        for rows in STATEMENT_ROWS:
            step = rows * usage_sql.COLUMNS
            while len(values) - start >= step:
                database.execute(_INSERTS[rows], values[start : start + step])
                start += step
        database.execute("DELETE FROM usage_records WHERE at < ?", (oldest,))
        database.execute("COMMIT")
    except BaseException:
        database.execute("ROLLBACK")
        raise


def _token_totals(database: sqlite3.Connection, since: Mapping[int, float]) -> dict[int, int]:
    """Input plus output tokens of each key's records from its Unix time on."""
    sql = usage_sql.token_total_sql()
    return {
        key_id: int(database.execute(sql, (key_id, start)).fetchone()[0])
        for key_id, start in since.items()
    }


def _report(database: sqlite3.Connection, command: GetUsage) -> UsageReport:
    sql, values, names = usage_sql.report_sql(command, day="date(at, 'unixepoch')")
    return UsageReport(
        tuple(dict(zip(names, row, strict=True)) for row in database.execute(sql, values))
    )
