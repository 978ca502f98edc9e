"""Where an admin command goes: `get_usage` to the usage actor (`sopy.actors.usage_store`),
every other command to the config actor (`sopy.runtime.config_requests`). Both admin transports
ask through `AdminInboxes.ask`, so neither knows which actor owns which command.

With worker processes (`--workers 2` or more), `applied` is where read-your-writes happens: a
config command's reply waits until every live worker applied the version now published
(`sopy.actors.worker_link.WorkerLinks.wait_applied`), so the JSON lines, REST and CLI replies
alike come only once no worker serves the old configuration; and `usage_gathered` has every
worker send the usage records it has not sent yet before `get_usage` is answered, so the answer
counts every request finished before it was asked, as in one process. In one process both are
None.
"""

from collections.abc import Awaitable, Callable

import attrs
import trio

from sopy.errors import InternalError
from sopy.messages import (
    AdminCommand,
    CommandFailed,
    CommandReply,
    CommandSucceeded,
    ConfigRequest,
    GetUsage,
    UsageQuery,
    UsageRequest,
)
from sopy.runtime.config_requests import ask_config_store


@attrs.frozen
class AdminInboxes:
    config: trio.MemorySendChannel[ConfigRequest]
    usage: trio.MemorySendChannel[UsageRequest]
    # Waits until every worker applied the latest version; the PIDs of those that lag.
    applied: Callable[[], Awaitable[tuple[int, ...]]] | None = None
    # Waits until every worker sent the usage records it held.
    usage_gathered: Callable[[], Awaitable[None]] | None = None

    async def ask(self, command: AdminCommand) -> CommandReply:
        if not isinstance(command, GetUsage):
            reply = await ask_config_store(self.config, command)
            if self.applied is not None and isinstance(reply, CommandSucceeded):
                lagging = await self.applied()
                if lagging:
                    return attrs.evolve(reply, lagging_workers=lagging)
            return reply
        if self.usage_gathered is not None:
            await self.usage_gathered()
        reply_send, reply_receive = trio.open_memory_channel[CommandReply](1)
        async with reply_receive:
            await self.usage.send(UsageQuery(command, reply_send))
            try:
                return await reply_receive.receive()
            except trio.EndOfChannel:
                return CommandFailed(
                    InternalError("the usage store restarted while answering get_usage; retry")
                )
