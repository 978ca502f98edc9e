"""The live usage stream for one websocket subscriber of `/admin/usage/events`: one message
`{"type": "usage", "record": {...}}` per model request as it ends, from the `UsageLedger`.
Records carry key ids, never keys. A subscriber that falls `buffer` records behind is
disconnected with close code 4001 (its records stay in `get_usage`); requests never wait for it.
"""

import logging

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from sopy.admin.event_stream import CLOSE_TIMEOUT, SLOW_SUBSCRIBER_CLOSE_CODE
from sopy.codec import converter
from sopy.runtime.usage_ledger import UsageLedger

log = logging.getLogger(__name__)


async def stream_usage(ws: WebSocketConnection, ledger: UsageLedger, buffer: int) -> None:
    fell_behind = False
    try:
        with ledger.subscribe(buffer) as records:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_client_closes, ws, nursery.cancel_scope)
                async for record in records:
                    message = {"type": "usage", "record": converter.unstructure(record)}
                    await ws.send_message(orjson.dumps(message).decode())
                # Only the ledger ends the channel: when this subscriber's buffer is full.
                fell_behind = True
                nursery.cancel_scope.cancel()
    except* ConnectionClosed:
        log.debug("an /admin/usage/events subscriber went away")
    if not fell_behind:
        return
    reason = f"fell more than {buffer} usage records behind; get_usage has them all"
    log.warning("dropping an /admin/usage/events subscriber that %s", reason)
    with trio.move_on_after(CLOSE_TIMEOUT):
        await ws.aclose(SLOW_SUBSCRIBER_CLOSE_CODE, reason)


async def _until_client_closes(ws: WebSocketConnection, stream_scope: trio.CancelScope) -> None:
    """Subscribers have nothing to say; reading notices when they leave."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        stream_scope.cancel()
