"""The in-memory side of usage accounting: where the HTTP front puts each request's
`UsageRecord`, without awaiting anything.

`record` appends the record to the batch the usage actor (`sopy.actors.usage_store`) writes
every second, and hands it to every live subscriber of `/admin/usage/events`
(`sopy.admin.usage_stream`). Both are bounded: past `max_pending` unwritten records (the file
refuses writes for a long time) new ones are counted and dropped with a warning, and a
subscriber whose buffer is full is cut off (its channel closed) rather than slowing a request.
"""

import contextlib
import logging
from collections.abc import Iterator

import trio

from sopy.messages import UsageRecord

log = logging.getLogger(__name__)


class UsageLedger:
    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        self._pending: list[UsageRecord] = []
        self._dropped = 0
        self._subscribers: set[trio.MemorySendChannel[UsageRecord]] = set()

    def record(self, record: UsageRecord) -> None:
        if len(self._pending) < self._max_pending:
            self._pending.append(record)
        else:
            self._dropped += 1
        if self._subscribers:
            self._publish(record)

    def _publish(self, record: UsageRecord) -> None:
        slow = []
        for subscriber in self._subscribers:
            try:
                subscriber.send_nowait(record)
            except (trio.WouldBlock, trio.BrokenResourceError):
                slow.append(subscriber)
        for subscriber in slow:
            self._subscribers.discard(subscriber)
            subscriber.close()

    def take_pending(self) -> list[UsageRecord]:
        """The records not written yet, which the caller now owns (`give_back` if the write
        fails)."""
        taken, self._pending = self._pending, []
        if self._dropped:
            log.warning(
                "%d usage records were dropped: more than %d were waiting to be written",
                self._dropped,
                self._max_pending,
            )
            self._dropped = 0
        return taken

    def give_back(self, records: list[UsageRecord]) -> None:
        room = max(0, self._max_pending - len(self._pending))
        self._dropped += max(0, len(records) - room)
        self._pending[:0] = records[:room]

    @contextlib.contextmanager
    def subscribe(self, buffer: int) -> Iterator[trio.MemoryReceiveChannel[UsageRecord]]:
        """Every record from now on, until the subscriber falls `buffer` records behind (then
        the channel ends)."""
        send, receive = trio.open_memory_channel[UsageRecord](buffer)
        self._subscribers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
