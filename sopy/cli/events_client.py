"""`sopy events`: follow the admin socket's live change stream, one readable line per change."""

import datetime
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson
import trio
import trio_websocket

from sopy.cli.admin_client import connect_admin_socket

EVENTS_RESOURCE = "/admin/events"


async def follow_events(
    socket_path: Path, since: int | None, *, raw: bool, out: TextIO = sys.stdout
) -> int:
    """Print every message until the server closes the stream; returns the exit code. Raises
    AdminUnreachable when the admin socket cannot be reached."""
    # Not trio.open_unix_socket: when the server's connection queue is full, it returns a
    # stream that was never connected instead of an error.
    connected = await trio.to_thread.run_sync(connect_admin_socket, socket_path)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(connected))
    resource = EVENTS_RESOURCE if since is None else f"{EVENTS_RESOURCE}?since={since}"
    async with trio.open_nursery() as nursery:
        try:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "sopy", resource)
        except trio_websocket.HandshakeError as exc:
            print(f"sopy: the server refused the event stream: {exc}", file=sys.stderr)
            return 2
        try:
            while True:
                message = orjson.loads(await ws.get_message())
                print(orjson.dumps(message).decode() if raw else describe(message), file=out)
                out.flush()
        except trio_websocket.ConnectionClosed as closed:
            code, why = (closed.reason.code, closed.reason.reason) if closed.reason else (None, "")
            print(f"sopy: the event stream closed (code {code}): {why or ''}", file=sys.stderr)
            return 1


def describe(message: dict[str, Any]) -> str:
    version = message.get("version")
    when = _time(message.get("at"))
    if message.get("type") == "snapshot":
        snapshot = message.get("snapshot", {})
        counts = ", ".join(f"{len(snapshot.get(part, []))} {part}" for part in snapshot)
        return f"v{version} {when} snapshot: {counts}"
    entity = " ".join(f"{key}={value}" for key, value in message.get("entity", {}).items())
    return f"v{version} {when} {message.get('kind')} {entity}".rstrip()


def _time(at: object) -> str:
    if not isinstance(at, int | float):
        return "-"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
