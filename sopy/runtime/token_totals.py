"""Asking the usage actor (`sopy.actors.usage_store`) how many tokens each key with a budget has
used since its count began: what the key gate is seeded with before any request is admitted
(by the HTTP front in one process, by the primary of `--workers`), so a budget survives a
restart.
"""

import logging
from collections.abc import Mapping

import trio

from sopy.messages import TokenTotalsQuery, UsageRequest

log = logging.getLogger(__name__)


async def ask_token_totals(
    usage_inbox: trio.MemorySendChannel[UsageRequest], starts: Mapping[int, float]
) -> Mapping[int, int]:
    """Each key's input plus output tokens from its start time on (`starts`: key id -> Unix
    time); every key counts from 0 if the usage actor restarted before answering."""
    reply_send, reply_receive = trio.open_memory_channel[Mapping[int, int]](1)
    async with reply_receive:
        await usage_inbox.send(TokenTotalsQuery(starts, reply_send))
        try:
            return await reply_receive.receive()
        except trio.EndOfChannel:
            log.error("the usage store restarted before counting the keys' token budgets")
            return {}
