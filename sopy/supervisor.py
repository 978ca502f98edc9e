"""The supervisor: one trio nursery that starts every actor, restarts a crashed one with
exponential backoff, and stops them all when asked.

Actors are started in dependency order (the config actor publishes its snapshot before anything
that serves requests starts). Each runs under `supervise`, which reports the actor's start value
once, logs a crash with its traceback, waits, and starts the actor again; an actor that fails
before it ever started is not retried: the error reaches the caller, who cannot start Sopy.
"""

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from sopy.actors.admin_socket import AdminSocket
from sopy.actors.config_store import ConfigStore
from sopy.actors.http_front import HttpFront
from sopy.actors.upstream_pool import UpstreamPools
from sopy.change_feed import ChangeFeed
from sopy.errors import innermost
from sopy.messages import ConfigRequest
from sopy.settings import Settings

log = logging.getLogger(__name__)

CONFIG_INBOX_SIZE = 256


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


@attrs.frozen
class RunningSopy:
    """What a started Sopy tells its caller: where to reach it and how to follow changes."""

    http_url: str
    admin_socket: Path
    feed: ChangeFeed


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


async def run_sopy(
    settings: Settings,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[RunningSopy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until `shutdown` is set."""
    feed = ChangeFeed()
    config_send, config_receive = trio.open_memory_channel[ConfigRequest](CONFIG_INBOX_SIZE)
    store = ConfigStore(settings.db_path, config_receive, feed)
    pools = UpstreamPools(feed)
    front = HttpFront(settings, feed, pools)
    admin = AdminSocket(settings.admin_socket, config_send, feed, settings.event_buffer)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, "config_store", store.run)
        admin_path = await nursery.start(supervise, "admin_socket", admin.run)
        await nursery.start(supervise, "upstream_pools", pools.run)
        http_url = await nursery.start(supervise, "http_front", front.run)
        task_status.started(RunningSopy(http_url, admin_path, feed))
        await shutdown.wait()
        log.info("shutting down")
        nursery.cancel_scope.cancel()
