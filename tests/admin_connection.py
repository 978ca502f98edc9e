"""Test clients for the admin socket: `AdminConnection` (one connection, one JSON line out, one
JSON line in) and `open_events` (the `/admin/events` websocket)."""

from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import trio
import trio_websocket


class AdminConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def open(cls, path: Path) -> "AdminConnection":
        return cls(await trio.open_unix_socket(str(path)))

    async def __aenter__(self) -> "AdminConnection":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stream.aclose()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_reply(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("admin socket closed the connection")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def call(self, command: str, **fields: Any) -> dict[str, Any]:
        await self.send_raw(orjson.dumps({"command": command, **fields}) + b"\n")
        return await self.read_reply()

    async def ok(self, command: str, **fields: Any) -> Any:
        """Call and assert success; returns the result."""
        reply = await self.call(command, **fields)
        assert reply["ok"] is True, reply
        return reply["result"]

    async def error(self, command: str, **fields: Any) -> dict[str, Any]:
        """Call and assert failure; returns the error object."""
        reply = await self.call(command, **fields)
        assert reply["ok"] is False, reply
        error: dict[str, Any] = reply["error"]
        return error


async def open_events(
    nursery: trio.Nursery, socket_path: Path, since: int | None = None
) -> trio_websocket.WebSocketConnection:
    """A websocket subscribed to `/admin/events` (resuming after `since`, if given)."""
    stream = await trio.open_unix_socket(str(socket_path))
    resource = "/admin/events" if since is None else f"/admin/events?since={since}"
    return await trio_websocket.wrap_client_stream(nursery, stream, "sopy", resource)
