"""Where an admin command goes: `get_usage` to the usage actor (`sopy.actors.usage_store`),
every other command to the config actor (`sopy.runtime.config_requests`). Both admin transports
ask through `AdminInboxes.ask`, so neither knows which actor owns which command.
"""

import attrs
import trio

from sopy.errors import InternalError
from sopy.messages import (
    AdminCommand,
    CommandFailed,
    CommandReply,
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

    async def ask(self, command: AdminCommand) -> CommandReply:
        if not isinstance(command, GetUsage):
            return await ask_config_store(self.config, command)
        reply_send, reply_receive = trio.open_memory_channel[CommandReply](1)
        async with reply_receive:
            await self.usage.send(UsageQuery(command, reply_send))
            try:
                return await reply_receive.receive()
            except trio.EndOfChannel:
                return CommandFailed(
                    InternalError("the usage store restarted while answering get_usage; retry")
                )
