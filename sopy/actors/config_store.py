"""The config actor: the only owner of the SQLite database and the only publisher of changes.

It takes `AdminRequest`s from its inbox one at a time and applies each in one transaction on a
single worker thread. After the commit it publishes `ConfigChanged` with the new version and
snapshot on the `ChangeFeed`, then replies: by the time an admin sees the reply, the very next
public request is served with the new configuration. On start it loads the stored snapshot and
publishes it before reporting ready, so the front never serves without configuration.
`JournalRequest`s read the bounded change journal, for followers that resume from a version.

With `--store postgresql://...` other instances write to the same store: the actor then also
follows its change log (`sopy.actors.config_follower`, loaded only then), publishing every
change any instance commits, in version order, its own included, and after its own write it
publishes only once it has caught up to that version, so an admin reply still means "the next
request sees it here".
"""

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import trio

from sopy.config.database import JOURNAL_LENGTH, ConfigDatabase
from sopy.config.secret_box import SecretBox, key_file_for
from sopy.config.store_url import is_postgres_url, redacted
from sopy.errors import InternalError, SopyError, StartupError
from sopy.messages import (
    AdminRequest,
    CommandFailed,
    CommandReply,
    CommandSucceeded,
    ConfigChanged,
    ConfigRequest,
    ConfigSnapshot,
    JournalRequest,
)
from sopy.runtime.change_feed import ChangeFeed
from sopy.settings import Settings

if TYPE_CHECKING:
    from sopy.actors.config_follower import ConfigFollower

log = logging.getLogger(__name__)


class ConfigStore:
    def __init__(
        self,
        settings: Settings,
        inbox: trio.MemoryReceiveChannel[ConfigRequest],
        feed: ChangeFeed,
    ) -> None:
        self._settings = settings
        self._inbox = inbox
        self._feed = feed
        # One database call at a time: the calls share one SQLite connection.
        self._database_calls = trio.CapacityLimiter(1)
        # With a shared store: its follower, once the store is open.
        self._follower: ConfigFollower | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        db, snapshot = await trio.to_thread.run_sync(
            self._open_database, limiter=self._database_calls
        )
        if not db.sealing:
            log.warning(
                "--no-secret-key is set: provider credentials are stored in plain text in %s. "
                "Drop it to have them sealed with a key file created beside the database.",
                self._settings.db_path,
            )
        try:
            self._feed.publish(ConfigChanged(db.version, time.time(), None, snapshot))
            log.info("config loaded from %s at version %d", self._store_name(), db.version)
            async with trio.open_nursery() as nursery:
                if self._follower is not None:
                    nursery.start_soon(self._follower.follow_others)
                task_status.started()
                async for request in self._inbox:
                    if isinstance(request, JournalRequest):
                        await self._read_journal(db, request)
                    else:
                        await self._handle(db, request)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close, limiter=self._database_calls)

    def _store_name(self) -> str:
        store = self._settings.store
        return str(self._settings.db_path) if store is None else redacted(store)

    def _open_database(self) -> tuple[ConfigDatabase, ConfigSnapshot]:
        settings = self._settings
        key_file = key_file_for(settings)
        box = None if settings.secret_key is None else SecretBox(settings.secret_key)
        db: ConfigDatabase
        if settings.store is None:
            db = ConfigDatabase.open(settings.db_path, box, key_file)
        elif is_postgres_url(settings.store):
            # Only a gateway whose store is PostgreSQL loads its client and its follower.
            from sopy.actors.config_follower import ConfigFollower
            from sopy.config.postgres_store import PostgresConfigDatabase

            shared = PostgresConfigDatabase.open_url(settings.store, box, key_file, JOURNAL_LENGTH)
            self._follower = ConfigFollower(shared, self._feed, self._database_calls)
            db = shared
        else:
            raise StartupError(
                f"--store takes a postgresql:// URL such as "
                f"postgresql://sopy@db.example.com/sopy (got {redacted(settings.store)!r}); "
                "leave it out to keep the configuration in the --db-path file"
            )
        try:
            return db, db.startup_snapshot()
        except BaseException:
            db.close()
            raise

    async def _read_journal(self, db: ConfigDatabase, request: JournalRequest) -> None:
        async with request.reply_to:
            entries = await trio.to_thread.run_sync(
                db.journal_since, request.since, limiter=self._database_calls
            )
            with contextlib.suppress(trio.BrokenResourceError):
                await request.reply_to.send(entries)

    async def _handle(self, db: ConfigDatabase, request: AdminRequest) -> None:
        async with request.reply_to:
            now = time.time()
            try:
                applied = await trio.to_thread.run_sync(
                    db.apply, request.command, now, limiter=self._database_calls
                )
            except SopyError as error:
                await _reply(request, CommandFailed(error))
                return
            except Exception:
                await _reply(
                    request,
                    CommandFailed(
                        InternalError(
                            f"{request.command.command} failed inside the config store and was "
                            "rolled back; the server log has the details"
                        )
                    ),
                )
                raise
            if self._follower is not None:
                if applied.change is not None:
                    await self._follower.catch_up_after_write()
            elif applied.change is not None and applied.snapshot is not None:
                self._feed.publish(
                    ConfigChanged(applied.snapshot.version, now, applied.change, applied.snapshot)
                )
            await _reply(request, CommandSucceeded(applied.result))


async def _reply(request: AdminRequest, reply: CommandReply) -> None:
    try:
        await request.reply_to.send(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("%s was applied but its requester had gone away", request.command.command)
