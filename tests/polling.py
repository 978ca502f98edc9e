"""Waiting on plain counters (the mock upstream exposes counters, not events)."""

from collections.abc import Callable

import trio


async def within_one_second(condition: Callable[[], bool]) -> None:
    with trio.fail_after(1):
        while True:
            if condition():
                return
            await trio.sleep(0.005)
