"""Sending on a trio memory channel without a scheduler pass when it has room.

`await channel.send(...)` always yields to the scheduler, even when the message fits in the
buffer; on the request path every such pass is measurable (bench/README.md). `deliver` only
waits when the channel is full.
"""

from typing import TypeVar

import trio

T = TypeVar("T")


async def deliver(channel: trio.MemorySendChannel[T], message: T) -> None:
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        await channel.send(message)
