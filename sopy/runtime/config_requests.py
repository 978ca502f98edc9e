"""Asking the config actor over its inbox: one request, one reply channel, one answer.

Every admin transport (the JSON-lines socket, REST, the event stream) talks to the config actor
(`sopy.actors.config_store`) only through these two calls, so none of them holds business logic
of its own and none needs to know the actor itself.
"""

import trio

from sopy.errors import InternalError
from sopy.messages import (
    AdminRequest,
    CommandFailed,
    CommandReply,
    ConfigCommand,
    ConfigRequest,
    JournalEntry,
    JournalRequest,
)


async def ask_config_store(
    inbox: trio.MemorySendChannel[ConfigRequest], command: ConfigCommand
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
