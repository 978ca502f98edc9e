"""The HTTP side of the admin socket: the seed's admin REST routes and the `/admin/events` and
`/admin/usage/events` websockets, served with h11 and trio-websocket on connections that start
with an HTTP request.

REST requests become the same `AdminCommand`s as the JSON-lines protocol (through
`sopy.admin.routes` and `parse_admin_command`) and get the same reply envelope back, with an
HTTP status: 201 for a creation, the error's status (400, 404, 405, 409, 413, 500, 503)
otherwise.
"""

import urllib.parse
from http import HTTPStatus
from typing import Any

import h11
import orjson
import trio
import trio_websocket

from sopy.admin.command_text import field_value
from sopy.admin.event_stream import stream_changes
from sopy.admin.routes import AdminRoute, match_admin_route
from sopy.admin.usage_stream import stream_usage
from sopy.codec import admin_reply_json, parse_admin_command
from sopy.errors import InvalidField, InvalidJson, InvalidRequest, PayloadTooLarge, SopyError
from sopy.messages import CommandFailed, CommandSucceeded
from sopy.protocol.replay_stream import ReplayStream
from sopy.runtime.admin_requests import AdminInboxes
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.usage_ledger import UsageLedger

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
_RECEIVE_SIZE = 65536
EVENTS_PATH = "/admin/events"
USAGE_EVENTS_PATH = "/admin/usage/events"


class AdminHttp:
    def __init__(
        self,
        inboxes: AdminInboxes,
        feed: ChangeFeed,
        usage: UsageLedger,
        event_buffer: int,
    ) -> None:
        self._inboxes = inboxes
        self._feed = feed
        self._usage = usage
        self._event_buffer = event_buffer
        # `/admin/events` websockets open now (for the metrics).
        self.event_subscribers = 0

    async def serve(self, stream: ReplayStream) -> None:
        head = await _peek_head(stream)
        if b"upgrade: websocket" in head.lower():
            await self._serve_events(stream)
        else:
            await self._serve_rest(stream)

    async def _serve_rest(self, stream: ReplayStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await _next_request(connection, stream)
                if request is None:
                    return
                status, reply, headers = await self._answer(request, connection, stream)
            except h11.RemoteProtocolError as exc:
                malformed = InvalidRequest(f"malformed HTTP request: {exc}")
                status, reply = exc.error_status_hint, admin_reply_json(CommandFailed(malformed))
                headers = []
            await _respond(connection, stream, status, reply, headers)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _answer(
        self, request: h11.Request, connection: h11.Connection, stream: ReplayStream
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        try:
            body = await _read_body(connection, stream)
            method = request.method.decode("ascii")
            target = request.target.decode("latin-1")
            route, path_fields = match_admin_route(method, target)
            command = parse_admin_command(
                {
                    **_body_fields(route, body),
                    **_query_fields(route, target),
                    **{
                        name: field_value(route.command, name, text)
                        for name, text in path_fields.items()
                    },
                    "command": route.command.command,
                }
            )
        except SopyError as error:
            return error.status, admin_reply_json(CommandFailed(error)), error.response_headers()
        reply = await self._inboxes.ask(command)
        if isinstance(reply, CommandSucceeded):
            return route.status, admin_reply_json(reply), []
        return reply.error.status, admin_reply_json(reply), reply.error.response_headers()

    async def _serve_events(self, stream: ReplayStream) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            target = urllib.parse.urlsplit(request.path or "")
            if target.path == USAGE_EVENTS_PATH:
                await stream_usage(await request.accept(), self._usage, self._event_buffer)
                nursery.cancel_scope.cancel()
                return
            if target.path != EVENTS_PATH:
                await request.reject(404, body=f"no websocket at {target.path}".encode())
                return
            try:
                since = _since(target.query)
            except SopyError as error:
                await request.reject(400, body=error.message.encode())
                return
            ws = await request.accept()
            self.event_subscribers += 1
            try:
                await stream_changes(
                    ws, self._feed, self._inboxes.config, since, self._event_buffer
                )
            finally:
                self.event_subscribers -= 1
            nursery.cancel_scope.cancel()


async def _peek_head(stream: ReplayStream) -> bytes:
    """Read up to the end of the first request's head (or the size bound) and put it back."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
        chunk = await stream.receive_some(_RECEIVE_SIZE)
        if not chunk:
            break
        head += chunk
    stream.unread(head)
    return head.split(b"\r\n\r\n", 1)[0]


async def _next_request(connection: h11.Connection, stream: ReplayStream) -> h11.Request | None:
    event = await _next_event(connection, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    assert isinstance(event, h11.Request), event
    return event


async def _next_event(connection: h11.Connection, stream: ReplayStream) -> Any:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(bytes(await stream.receive_some(_RECEIVE_SIZE)))


async def _read_body(connection: h11.Connection, stream: ReplayStream) -> bytes:
    body = bytearray()
    while True:
        event = await _next_event(connection, stream)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise InvalidRequest("the connection closed before the request body was complete")


def _body_fields(route: AdminRoute, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    if not route.takes_body:
        raise InvalidRequest(f"{route.method} {route.path} takes no request body")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return fields


def _query_fields(route: AdminRoute, target: str) -> dict[str, Any]:
    query = urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query, keep_blank_values=True)
    fields: dict[str, Any] = {}
    for name, text in query:
        if name not in route.query_fields:
            raise InvalidField(
                f"{route.method} {route.path} takes no query parameter '{name}'", param=name
            )
        fields[name] = field_value(route.command, name, text)
    return fields


def _since(query: str) -> int | None:
    values = urllib.parse.parse_qs(query).get("since")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise InvalidField(
            f"since must be a config version number (got {values[0]!r})", param="since"
        ) from None


async def _respond(
    connection: h11.Connection,
    stream: ReplayStream,
    status: int,
    reply: dict[str, Any],
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    body = orjson.dumps(reply)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
    data = connection.send(response)
    data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)
