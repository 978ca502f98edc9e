"""The admin socket actor: one Unix socket (mode 0600) serving three protocols, told apart by a
connection's first bytes.

- Newline-delimited JSON (the seed's protocol; a line starts with `{`): each connection may send
  many commands and gets one reply line per command, in order: `{"ok": true, "result": ...}` or
  `{"ok": false, "error": {"code", "message"}}`, with the request's `"id"` echoed.
- HTTP (a line starts with a method such as `GET`): the admin REST routes, and the
  `/admin/events` websocket, both in `sopy.admin.http_transport`.

This module only translates: lines become `AdminCommand`s for the actor that answers them
(`AdminInboxes.ask`), replies become lines. It also owns the boundary around each connection:
whatever goes wrong on one connection (a reset, a broken pipe, a protocol error, a bug) ends that
connection alone and is logged once, so one client can never take the admin plane down.
"""

import logging
from pathlib import Path
from typing import Any

import h11
import orjson
import trio
import trio_websocket

from sopy.admin.http_transport import AdminHttp
from sopy.codec import admin_reply_json, parse_admin_command
from sopy.errors import InvalidJson, PayloadTooLarge, SopyError, innermost
from sopy.messages import CommandFailed
from sopy.protocol.line_reader import LineReader
from sopy.protocol.replay_stream import ReplayStream
from sopy.runtime.admin_requests import AdminInboxes
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.unix_listener import unix_listener
from sopy.runtime.usage_ledger import UsageLedger

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1024 * 1024
_SNIFF_SIZE = 4096
# What a client can do to its own connection: vanish (reset, broken pipe, closed) or break a
# protocol where no reply can answer it (a bad websocket handshake or frame). Anything else is a
# bug of ours, logged with its traceback.
_CLIENT_FAILURES = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    h11.RemoteProtocolError,
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
)


class AdminSocket:
    def __init__(
        self,
        path: Path,
        inboxes: AdminInboxes,
        feed: ChangeFeed,
        usage: UsageLedger,
        event_buffer: int,
    ) -> None:
        self._path = path
        self._inboxes = inboxes
        self._http = AdminHttp(inboxes, feed, usage, event_buffer)

    @property
    def event_subscribers(self) -> int:
        """`/admin/events` websockets open now."""
        return self._http.event_subscribers

    async def run(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        async with unix_listener(self._path) as listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, [listener])
            log.info("admin socket listening on %s", self._path)
            task_status.started(self._path)

    async def _serve_connection(self, socket_stream: trio.SocketStream) -> None:
        """Serve one client. Nothing raised here may escape: `trio.serve_listeners` would let it
        crash the actor, cutting every other connection and event subscriber and taking the
        socket file away until the supervisor restarts it."""
        try:
            await self._converse(socket_stream)
        except* _CLIENT_FAILURES as failure:
            cause = innermost(failure)
            log.info("an admin connection ended early: %s: %s", type(cause).__name__, cause)
        except* Exception as failure:
            log.error(
                "admin connection failed; closed it, other connections are unaffected",
                exc_info=innermost(failure),
            )

    async def _converse(self, socket_stream: trio.SocketStream) -> None:
        async with socket_stream:
            stream = ReplayStream(socket_stream)
            first = await _first_bytes(stream)
            if not first:
                return
            stream.unread(first)
            if first.lstrip()[:1].isupper():
                await self._http.serve(stream)
            else:
                await self._serve_json_lines(stream)

    async def _serve_json_lines(self, stream: ReplayStream) -> None:
        lines = LineReader(stream, MAX_LINE_BYTES)
        while (line := await lines.next_line()) is not None:
            if isinstance(line, bytes) and not line.strip():
                continue
            reply = await self._answer(line) if isinstance(line, bytes) else _too_long()
            await stream.send_all(orjson.dumps(reply) + b"\n")

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return _failure(
                InvalidJson(f"the line is not valid JSON ({exc}); send one JSON object per line")
            )
        request_id = payload.get("id") if isinstance(payload, dict) else None
        try:
            command = parse_admin_command(payload)
        except SopyError as error:
            return _failure(error, request_id)
        return admin_reply_json(await self._inboxes.ask(command), request_id)


async def _first_bytes(stream: ReplayStream) -> bytes:
    """Read until the first non-blank byte, which says which protocol the client speaks."""
    received = b""
    while not received.strip():
        chunk = await stream.receive_some(_SNIFF_SIZE)
        if not chunk:
            return b""
        received += chunk
    return received


def _too_long() -> dict[str, Any]:
    return _failure(
        PayloadTooLarge(f"the line is longer than {MAX_LINE_BYTES} bytes and was skipped")
    )


def _failure(error: SopyError, request_id: object = None) -> dict[str, Any]:
    return admin_reply_json(CommandFailed(error), request_id)
