"""A trio stream that hands back bytes already read from it before reading more.

The admin socket reads the first bytes of a connection to tell JSON lines from HTTP, and an HTTP
request's head to tell REST from a websocket upgrade; the chosen protocol handler then reads the
connection from its very first byte through this wrapper.
"""

import trio


class ReplayStream(trio.abc.Stream):
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._replay = b""

    def unread(self, data: bytes) -> None:
        self._replay = data + self._replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._replay:
            size = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:size], self._replay[size:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
