"""The response affinity store actor: the only owner of `sopy_responses.db`.

It keeps two of the HTTP front's in-memory maps across restarts: `ResponseAffinity` (response
id -> provider, backend, user key, expiry) and `KeptResponses` (the responses Sopy keeps itself
for providers that do not serve the Responses API). On start it loads the file into the maps
before it reports itself started, so the supervisor starts the front only after; then every
`FLUSH_INTERVAL` seconds, and once more when it is stopped, it writes the changes the front noted
since the last write in one transaction on its own worker thread. Requests never wait for it.

The file lives beside the config database, under the same private-file rules
(`sopy.runtime.private_files`).
"""

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import trio

from sopy.routing.kept_responses import KeptResponse, KeptResponses, PendingKept
from sopy.routing.response_affinity import PendingChange, ResponseAffinity, ResponseOwner
from sopy.runtime.private_files import open_private_database

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
DATABASE_NAME = "sopy_responses.db"

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS response_owners (
        response_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        backend TEXT NOT NULL,
        key_id INTEGER,
        expires_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS kept_responses (
        response_id TEXT PRIMARY KEY,
        key_id INTEGER,
        previous_response_id TEXT,
        input_items BLOB NOT NULL,
        response BLOB NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
)


def affinity_database_path(config_database: Path) -> Path:
    return config_database.parent / DATABASE_NAME


class ResponseAffinityStore:
    def __init__(self, path: Path, affinity: ResponseAffinity, kept: KeptResponses) -> None:
        self._path = path
        self._affinity = affinity
        self._kept = kept
        self._database_calls = trio.CapacityLimiter(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        database = await trio.to_thread.run_sync(self._open, limiter=self._database_calls)
        try:
            entries, kept = await trio.to_thread.run_sync(
                _load, database, limiter=self._database_calls
            )
            self._affinity.load(entries)
            self._kept.load(kept)
            log.info(
                "%d response ids and %d kept responses loaded from %s",
                len(self._affinity),
                len(self._kept),
                self._path,
            )
            task_status.started()
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                await self._flush(database)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush(database)
                await trio.to_thread.run_sync(database.close, limiter=self._database_calls)

    async def _flush(self, database: sqlite3.Connection) -> None:
        """Write the changes noted since the last write; if the file cannot take them (disk
        full, locked, read-only), keep them for the next try instead of losing them."""
        changes = self._affinity.take_changes()
        kept = self._kept.take_changes()
        if not changes and not kept:
            return
        try:
            await trio.to_thread.run_sync(
                _write, database, changes, kept, limiter=self._database_calls
            )
        except (sqlite3.Error, OSError) as exc:
            self._affinity.give_back(changes)
            self._kept.give_back(kept)
            log.warning(
                "could not write %d response id changes to %s (%s); they are kept in memory "
                "and written again in %g s",
                len(changes) + len(kept),
                self._path,
                exc,
                FLUSH_INTERVAL,
            )

    def _open(self) -> sqlite3.Connection:
        return open_private_database(self._path, "response affinity database", _SCHEMA)


def _load(
    database: sqlite3.Connection,
) -> tuple[list[tuple[str, ResponseOwner]], list[tuple[str, KeptResponse]]]:
    rows = database.execute(
        "SELECT response_id, provider, backend, key_id, expires_at FROM response_owners "
        "ORDER BY expires_at"
    )
    owners = [(row[0], ResponseOwner(row[1], row[2], row[3], row[4])) for row in rows]
    rows = database.execute(
        "SELECT response_id, key_id, previous_response_id, input_items, response, expires_at "
        "FROM kept_responses ORDER BY expires_at"
    )
    kept = [(row[0], KeptResponse(row[1], row[2], row[3], row[4], row[5])) for row in rows]
    return owners, kept


def _write(
    database: sqlite3.Connection,
    changes: Mapping[str, PendingChange],
    kept: Mapping[str, PendingKept],
) -> None:
    written = [
        (response_id, owner.provider, owner.backend, owner.key_id, owner.expires_at)
        for response_id, owner in changes.items()
        if owner is not None
    ]
    deleted = [(response_id,) for response_id, owner in changes.items() if owner is None]
    database.execute("BEGIN")
    try:
        database.executemany(
            "INSERT OR REPLACE INTO response_owners VALUES (?, ?, ?, ?, ?)", written
        )
        database.executemany("DELETE FROM response_owners WHERE response_id = ?", deleted)
        database.executemany(
            "INSERT OR REPLACE INTO kept_responses VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    response_id,
                    response.key_id,
                    response.previous_response_id,
                    response.input_items,
                    response.response,
                    response.expires_at,
                )
                for response_id, response in kept.items()
                if response is not None
            ],
        )
        database.executemany(
            "DELETE FROM kept_responses WHERE response_id = ?",
            [(response_id,) for response_id, response in kept.items() if response is None],
        )
        database.execute("COMMIT")
    except BaseException:
        database.execute("ROLLBACK")
        raise
