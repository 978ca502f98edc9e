"""The fan-out of `ConfigChanged` from the config actor to everyone who follows the config.

The supervisor creates one `ChangeFeed` that outlives actor restarts. The config actor is its
only publisher. `latest` is the newest published change, read without awaiting by the request
path (so a change is visible to the very next request once the admin reply is out); followers
that need every change call `subscribe()` and get a memory channel primed with `latest`.
Publishing never blocks: a follower whose buffer is full is dropped (its channel ends) and may
subscribe again to start over from a fresh snapshot.
"""

import logging

import trio

from sopy.messages import ConfigChanged

log = logging.getLogger(__name__)

DEFAULT_FOLLOWER_BUFFER = 1024


class ChangeFeed:
    def __init__(self) -> None:
        self.latest: ConfigChanged | None = None
        self._followers: list[trio.MemorySendChannel[ConfigChanged]] = []
        self._first_published = trio.Event()

    async def wait_published(self) -> ConfigChanged:
        """The latest change, once the config actor has published its first snapshot."""
        await self._first_published.wait()
        assert self.latest is not None
        return self.latest

    def publish(self, changed: ConfigChanged) -> None:
        self.latest = changed
        self._first_published.set()
        keep: list[trio.MemorySendChannel[ConfigChanged]] = []
        for follower in self._followers:
            try:
                follower.send_nowait(changed)
            except trio.WouldBlock:
                log.warning(
                    "dropping a config follower that fell %d changes behind",
                    follower.statistics().max_buffer_size,
                )
                follower.close()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            else:
                keep.append(follower)
        self._followers = keep

    def subscribe(
        self, buffer: int = DEFAULT_FOLLOWER_BUFFER
    ) -> trio.MemoryReceiveChannel[ConfigChanged]:
        send, receive = trio.open_memory_channel[ConfigChanged](buffer)
        if self.latest is not None:
            send.send_nowait(self.latest)
        self._followers.append(send)
        return receive
