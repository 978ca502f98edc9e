"""Waiting on state that offers no event to wait on: the mock upstream's counters, files that a
child process removes."""

from collections.abc import Callable

import trio


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    with trio.fail_after(within):
        while True:
            if condition():
                return
            await trio.sleep(0.005)
