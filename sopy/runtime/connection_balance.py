"""Keeping the worker processes' shares of the public connections even.

Every worker accepts from the one listening socket the primary opened. Left alone, whichever
worker the kernel wakes first accepts a whole burst of connections (a load balancer or a
benchmark opening its keep-alive connections at once), and the other workers idle beside it for
as long as those connections live. `SharedConnectionCounts` is a table of open-connection counts,
one slot per worker, in memory shared by every worker (a memfd the primary made and each worker
inherited). A worker counts its own as it accepts and closes them
(`sopy.protocol.server.HttpServer`); before accepting, it waits while it holds more than
`SLACK` connections over the least loaded worker, for at most `MAX_WAIT` seconds per
connection: the less loaded worker, woken by the same queued connection, takes it meanwhile;
and a worker that is not accepting at all (starting, stopped, crashed) delays the others by no
more than that.
"""

import mmap
import os

import trio

SLACK = 1
MAX_WAIT = 0.005
POLL_INTERVAL = 0.0005
_SLOT_BYTES = 8


def shared_counts_file(workers: int) -> int:
    """A new memfd holding one zeroed count per worker, for the primary to hand down."""
    descriptor = os.memfd_create("sopy-connection-counts", 0)
    os.ftruncate(descriptor, workers * _SLOT_BYTES)
    return descriptor


class SharedConnectionCounts:
    """This worker's view of the table: its own slot to write, every slot to read."""

    def __init__(self, descriptor: int, slot: int) -> None:
        self._map = mmap.mmap(descriptor, 0)
        self._counts = memoryview(self._map).cast("q")
        self._slot = slot
        self._counts[slot] = 0

    def accepted(self) -> None:
        self._counts[self._slot] += 1

    def closed(self) -> None:
        self._counts[self._slot] -= 1

    async def wait_turn(self) -> None:
        counts, slot = self._counts, self._slot
        if counts[slot] <= min(counts) + SLACK:
            return
        # Polled: the counts are other processes' memory, which offers nothing to wait on.
        deadline = trio.current_time() + MAX_WAIT
        while counts[slot] > min(counts) + SLACK and trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep(POLL_INTERVAL)
