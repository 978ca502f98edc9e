"""Keeping one actor running: `supervise` starts it, reports its start value once, logs a crash
with its traceback, waits a growing delay (`RestartBackoff`) and starts it again. An actor that
fails before it ever started is not retried: the error reaches whoever started it.

The supervisor (`sopy.supervisor`) runs every top-level actor this way; `ProviderPools` runs each
provider's pool this way, so one pool's crash costs only that pool's in-flight requests.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from sopy.errors import innermost

log = logging.getLogger(__name__)


@attrs.frozen
class RestartBackoff:
    """Delay before restarting an actor: doubles per crash, resets once it ran long enough."""

    first_delay: float = 0.1
    max_delay: float = 30.0
    healthy_after: float = 30.0

    def delay(self, previous_delay: float | None, ran_for: float) -> float:
        if previous_delay is None or ran_for >= self.healthy_after:
            return self.first_delay
        return min(previous_delay * 2, self.max_delay)


async def supervise(
    name: str,
    run: Callable[..., Awaitable[None]],
    backoff: RestartBackoff = RestartBackoff(),
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    delay: float | None = None
    started = False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                value = await nursery.start(run)
                if not started:
                    started = True
                    task_status.started(value)
            return
        except Exception as crash:
            if not started:
                raise
            delay = backoff.delay(delay, trio.current_time() - began)
            log.error(
                "actor %s crashed; restarting it in %.1f s", name, delay, exc_info=innermost(crash)
            )
        await trio.sleep(delay)
