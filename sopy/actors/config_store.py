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

from sopy.change_feed import ChangeFeed
from sopy.config_db import ConfigDatabase
from sopy.errors import InternalError, SopyError
from sopy.messages import (
    AdminCommand,
    AdminRequest,
    CommandFailed,
    CommandReply,
    CommandSucceeded,
    ConfigChanged,
    ConfigRequest,
    JournalEntry,
    JournalRequest,
)
from sopy.secret_box import secret_box_for
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


async def ask_config_store(
    inbox: trio.MemorySendChannel[ConfigRequest], command: AdminCommand
) -> CommandReply:
    """Send one command to the config actor and wait for its reply (after the commit).

    Every admin transport uses this, so none of them holds business logic of its own.
    """
    reply_send, reply_receive = trio.open_memory_channel[CommandReply](1)
    async with reply_receive:
        await inbox.send(AdminRequest(command, reply_send))
        try:
            return await reply_receive.receive()
        except trio.EndOfChannel:
            return CommandFailed(
                InternalError(
                    f"the config store restarted while handling {command.command}; check "
                    "with a list or get command whether it took effect, then retry"
                )
            )


async def read_journal(
    inbox: trio.MemorySendChannel[ConfigRequest], since: int
) -> tuple[JournalEntry, ...] | None:
    """The changes after `since` from the config actor's journal (None: too old, use a snapshot)."""
    reply_send, reply_receive = trio.open_memory_channel[tuple[JournalEntry, ...] | None](1)
    async with reply_receive:
        await inbox.send(JournalRequest(since, reply_send))
        try:
            return await reply_receive.receive()
        except trio.EndOfChannel:
            return None
