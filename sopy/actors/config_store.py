"""The config actor: the only owner of the SQLite database and the only publisher of changes.

It takes `AdminRequest`s from its inbox one at a time and applies each in one transaction on a
single worker thread. After the commit it publishes `ConfigChanged` with the new version and
snapshot on the `ChangeFeed`, then replies: by the time an admin sees the reply, the very next
public request is served with the new configuration. On start it loads the stored snapshot and
publishes it before reporting ready, so the front never serves without configuration.
`JournalRequest`s read the bounded change journal, for followers that resume from a version.

With `--store postgresql://...` other instances write to the same store: the actor then also
follows its change log (`_follow_others`), publishing every change any instance commits, in
version order, its own included, and after its own write it publishes only once it has caught
up to that version, so an admin reply still means "the next request sees it here".
"""

import contextlib
import logging
import time

import psycopg
import trio

from sopy.config import secret_box
from sopy.config.database import JOURNAL_LENGTH, ConfigDatabase
from sopy.config.postgres_store import (
    RECHECK_SECONDS,
    Listener,
    PostgresConfigDatabase,
    is_postgres_url,
    redacted,
)
from sopy.config.secret_box import SecretBox, key_file_for
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

log = logging.getLogger(__name__)

# Waits between attempts to reach a shared store that went away.
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0)


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
        # Catching up with a shared store and publishing what it found, one at a time, so
        # that changes are published in version order.
        self._publishing = trio.Lock()

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
                if isinstance(db, PostgresConfigDatabase):
                    nursery.start_soon(self._follow_others, db)
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
            db = PostgresConfigDatabase.open_url(settings.store, box, key_file, JOURNAL_LENGTH)
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
            if isinstance(db, PostgresConfigDatabase):
                if applied.change is not None:
                    await self._catch_up_after_write(db)
            elif applied.change is not None and applied.snapshot is not None:
                self._feed.publish(
                    ConfigChanged(applied.snapshot.version, now, applied.change, applied.snapshot)
                )
            await _reply(request, CommandSucceeded(applied.result))

    async def _catch_up_after_write(self, db: PostgresConfigDatabase) -> None:
        """Publish the change just committed (and any before it) before the reply; if the
        store went away right after the commit, the follower publishes it once it is back."""
        try:
            await self._catch_up(db)
        except psycopg.Error as exc:
            log.warning(
                "a change was committed, but reading it back from %s failed (%s); it is "
                "published once the store answers again",
                db.describe(),
                " ".join(str(exc).split()),
            )

    async def _catch_up(self, db: PostgresConfigDatabase) -> None:
        """Publish, in order, every change committed since the version published last."""
        async with self._publishing:
            try:
                caught = await trio.to_thread.run_sync(db.catch_up, limiter=self._database_calls)
            except secret_box.WrongSecretKey as exc:
                log.error(
                    "a credential in %s no longer opens with this instance's secret key (%s): "
                    "was it rotated on another instance? Restart this one with the new key; "
                    "it serves version %d until then",
                    db.describe(),
                    exc,
                    db.version,
                )
                return
            if caught is None:
                return
            snapshot = caught.snapshot
            if caught.changes is None:
                self._feed.publish(ConfigChanged(snapshot.version, time.time(), None, snapshot))
                return
            # The snapshot is the one after the last change: the front serves it from the
            # first of them on, and event subscribers get each change in order.
            for entry in caught.changes:
                self._feed.publish(ConfigChanged(entry.version, entry.at, entry.change, snapshot))
            if not caught.changes or caught.changes[-1].version != snapshot.version:
                self._feed.publish(ConfigChanged(snapshot.version, time.time(), None, snapshot))

    async def _follow_others(self, db: PostgresConfigDatabase) -> None:
        """Forever: listen for the versions other instances commit and catch up with the change
        log on each, on every (re)connect and every `RECHECK_SECONDS`; reconnect when the
        store goes away, however long it stays away."""
        failures = 0
        while True:
            try:
                listener = await trio.to_thread.run_sync(db.open_listener)
            except psycopg.Error as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "cannot follow the config store %s (%s); serving the configuration at "
                        "version %d until it answers again",
                        db.describe(),
                        " ".join(str(exc).split()),
                        db.version,
                    )
                await trio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
                continue
            if failures:
                log.info("following the config store %s again", db.describe())
            failures = 0
            try:
                await self._listen(db, listener)
            except psycopg.Error as exc:
                log.warning(
                    "lost the config store %s while following it (%s); reconnecting",
                    db.describe(),
                    " ".join(str(exc).split()),
                )
            finally:
                listener.close()

    async def _listen(self, db: PostgresConfigDatabase, listener: Listener) -> None:
        await self._catch_up(db)
        while True:
            with trio.move_on_after(RECHECK_SECONDS):
                await trio.lowlevel.wait_readable(listener.fileno())
            arrived = listener.arrived()
            if not arrived or max(arrived) > db.version:
                await self._catch_up(db)


async def _reply(request: AdminRequest, reply: CommandReply) -> None:
    try:
        await request.reply_to.send(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("%s was applied but its requester had gone away", request.command.command)
