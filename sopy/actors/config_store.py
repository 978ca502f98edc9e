"""The config actor: the only owner of the SQLite database and the only publisher of changes.

It takes `AdminRequest`s from its inbox one at a time and applies each in one transaction on a
single worker thread. After the commit it publishes `ConfigChanged` with the new version and
snapshot on the `ChangeFeed`, then replies: by the time an admin sees the reply, the very next
public request is served with the new configuration. On start it loads the stored snapshot and
publishes it before reporting ready, so the front never serves without configuration.
`JournalRequest`s read the bounded change journal, for followers that resume from a version.
"""

import contextlib
import logging
import time

import trio

from sopy.config.database import ConfigDatabase
from sopy.config.secret_box import secret_box_for
from sopy.errors import InternalError, SopyError
from sopy.messages import (
    AdminRequest,
    CommandFailed,
    CommandReply,
    CommandSucceeded,
    ConfigChanged,
    ConfigRequest,
    JournalRequest,
)
from sopy.runtime.change_feed import ChangeFeed
from sopy.settings import Settings

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
        self._thread = trio.CapacityLimiter(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        db = await trio.to_thread.run_sync(self._open_database)
        if not db.sealing:
            log.warning(
                "no secret key is set: provider credentials are stored in plain text in %s. "
                "Generate a key with `sopy secret-key` and set SOPY_SECRET_KEY, or pass "
                "--secret-key-file PATH to have one created.",
                self._settings.db_path,
            )
        try:
            snapshot = await trio.to_thread.run_sync(db.load_snapshot, limiter=self._thread)
            self._feed.publish(ConfigChanged(db.version, time.time(), None, snapshot))
            log.info("config loaded from %s at version %d", self._settings.db_path, db.version)
            task_status.started()
            async for request in self._inbox:
                if isinstance(request, JournalRequest):
                    await self._read_journal(db, request)
                else:
                    await self._handle(db, request)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close, limiter=self._thread)

    def _open_database(self) -> ConfigDatabase:
        settings = self._settings
        box = secret_box_for(settings.secret_key, settings.secret_key_file)
        return ConfigDatabase.open(settings.db_path, box, settings.secret_key_file)

    async def _read_journal(self, db: ConfigDatabase, request: JournalRequest) -> None:
        async with request.reply_to:
            entries = await trio.to_thread.run_sync(
                db.journal_since, request.since, limiter=self._thread
            )
            with contextlib.suppress(trio.BrokenResourceError):
                await request.reply_to.send(entries)

    async def _handle(self, db: ConfigDatabase, request: AdminRequest) -> None:
        async with request.reply_to:
            now = time.time()
            try:
                applied = await trio.to_thread.run_sync(
                    db.apply, request.command, now, limiter=self._thread
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
            if applied.change is not None and applied.snapshot is not None:
                self._feed.publish(
                    ConfigChanged(applied.snapshot.version, now, applied.change, applied.snapshot)
                )
            await _reply(request, CommandSucceeded(applied.result))


async def _reply(request: AdminRequest, reply: CommandReply) -> None:
    try:
        await request.reply_to.send(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("%s was applied but its requester had gone away", request.command.command)
