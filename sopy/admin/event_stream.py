"""The live change stream for one websocket subscriber of `/admin/events`.

A subscriber first gets the current version and the full snapshot (secrets masked), then one
event per committed change, in commit order. With `?since=V` it gets exactly the changes after V
from the config actor's journal instead, or a fresh snapshot if the journal no longer reaches
back that far. Changes wait in a bounded per-subscriber buffer: a subscriber that stops reading
is disconnected with close code 4001 and a reason saying how to resume; the config actor is never
slowed down by it.
"""

import logging

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from sopy.admin.event_views import event_message, snapshot_message
from sopy.messages import ConfigChanged, ConfigRequest
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.config_requests import read_journal

log = logging.getLogger(__name__)

SLOW_SUBSCRIBER_CLOSE_CODE = 4001
CLOSE_TIMEOUT = 5.0


class SlowSubscriber(Exception):
    def __init__(self, last_sent: int, buffer: int) -> None:
        super().__init__(
            f"fell more than {buffer} changes behind; reconnect with ?since={last_sent}"
        )
        self.last_sent = last_sent


class _Progress:
    def __init__(self) -> None:
        self.sent_version = -1


async def stream_changes(
    ws: WebSocketConnection,
    feed: ChangeFeed,
    config_inbox: trio.MemorySendChannel[ConfigRequest],
    since: int | None,
    buffer: int,
) -> None:
    progress = _Progress()
    changes = feed.subscribe()
    try:
        async with changes, trio.open_nursery() as nursery:
            nursery.start_soon(_until_client_closes, ws, nursery.cancel_scope)
            progress.sent_version = await _send_start(ws, config_inbox, changes, since)
            pending_send, pending = trio.open_memory_channel[ConfigChanged](buffer)
            nursery.start_soon(_queue_changes, changes, pending_send, progress, buffer)
            await _send_changes(ws, pending, progress)
    except* SlowSubscriber as slow:
        reason = str(slow.exceptions[0])
        log.warning("dropping an /admin/events subscriber that %s", reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await ws.aclose(SLOW_SUBSCRIBER_CLOSE_CODE, reason)
    except* ConnectionClosed:
        log.debug("an /admin/events subscriber went away")


async def _send_start(
    ws: WebSocketConnection,
    config_inbox: trio.MemorySendChannel[ConfigRequest],
    changes: trio.MemoryReceiveChannel[ConfigChanged],
    since: int | None,
) -> int:
    """Send what the subscriber is missing; return the version it is now up to."""
    latest = changes.receive_nowait()
    if since is not None:
        missed = await read_journal(config_inbox, since)
        if missed is not None:
            for entry in missed:
                await _send(ws, event_message(entry.version, entry.at, entry.change))
            return missed[-1].version if missed else since
    await _send(ws, snapshot_message(latest.version, latest.at, latest.snapshot))
    return latest.version


async def _queue_changes(
    changes: trio.MemoryReceiveChannel[ConfigChanged],
    pending: trio.MemorySendChannel[ConfigChanged],
    progress: _Progress,
    buffer: int,
) -> None:
    async with pending:
        async for changed in changes:
            try:
                pending.send_nowait(changed)
            except trio.WouldBlock:
                raise SlowSubscriber(progress.sent_version, buffer) from None
    raise SlowSubscriber(progress.sent_version, buffer)


async def _send_changes(
    ws: WebSocketConnection,
    pending: trio.MemoryReceiveChannel[ConfigChanged],
    progress: _Progress,
) -> None:
    async for changed in pending:
        if changed.version <= progress.sent_version:
            continue
        if changed.change is None:
            await _send(ws, snapshot_message(changed.version, changed.at, changed.snapshot))
        else:
            await _send(ws, event_message(changed.version, changed.at, changed.change))
        progress.sent_version = changed.version


async def _until_client_closes(ws: WebSocketConnection, stream_scope: trio.CancelScope) -> None:
    """Subscribers have nothing to say; reading notices when they leave."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        stream_scope.cancel()


async def _send(ws: WebSocketConnection, message: dict[str, object]) -> None:
    await ws.send_message(orjson.dumps(message).decode())
