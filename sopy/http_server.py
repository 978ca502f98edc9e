"""Sopy's HTTP/1.1 server for the public API: h11 framing over trio sockets, one task per
connection, its requests handled in that task one after another (keep-alive).

It owns the connection-level rules: a request head must arrive within `header_timeout` (which
also bounds how long a connection may sit idle between requests) and within `max_head_bytes`; a
malformed request gets an OpenAI-shaped 4xx and the connection is closed; `Expect: 100-continue`
is answered only when the handler starts reading the body; a response sent before the request
body was read closes the connection after it; and on `stop` the listeners close, idle
connections close, and busy ones finish their current request (for up to `drain_timeout`).

Why not hypercorn: on the 2-core bench machine hypercorn alone spends ~0.5 ms of CPU per request
for a no-op ASGI app (a per-request app task, a restarted idle-timer task, a lock and a separate
socket write per ASGI message), against ~0.15 ms for h11 on trio; that floor alone was most of
the added-latency budget (see bench/README.md).
"""

import email.utils
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import attrs
import h11
import orjson
import trio

from sopy.errors import InvalidRequest, SopyError

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536
_LINGER_SECONDS = 1.0


class ClientGone(Exception):
    """The client closed its connection before its request had arrived."""


class MalformedBody(Exception):
    """The request body broke HTTP/1.1 framing (e.g. a bad chunk size)."""


@attrs.frozen
class ServerLimits:
    header_timeout: float
    max_head_bytes: int
    drain_timeout: float


Handler = Callable[["HttpExchange"], Awaitable[None]]


class HttpExchange:
    """One request and the response to it. Send either `respond` once, or `start_response`,
    any number of `send_chunk` and one `end_response`."""

    def __init__(self, connection: "_Connection", request: h11.Request) -> None:
        self._connection = connection
        self.method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        self.raw_path, _, self.query = target.partition("?")
        self.path = urllib.parse.unquote(self.raw_path)
        self.headers: Sequence[tuple[bytes, bytes]] = request.headers
        self.response_started = False

    @property
    def target(self) -> str:
        """The path and query as the client sent them, undecoded."""
        return f"{self.raw_path}?{self.query}" if self.query else self.raw_path

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read_body_chunk(self) -> bytes | None:
        """The next piece of the request body; None once it is complete."""
        connection = self._connection
        if connection.protocol.they_are_waiting_for_100_continue:
            await connection.write(
                connection.protocol.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        try:
            event = await connection.next_event()
        except h11.RemoteProtocolError as exc:
            if connection.gone:
                raise ClientGone from None
            raise MalformedBody(str(exc)) from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise ClientGone

    async def respond(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A complete response: `headers`, Content-Length, then `body`."""
        self.response_started = True
        await self._connection.respond(
            status, [*headers, *self._connection_headers()], body, with_body=self.method != "HEAD"
        )

    async def start_response(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], first: bytes = b""
    ) -> None:
        """The head of a response whose body follows in pieces (chunked), with the `first`
        piece in the same write."""
        self.response_started = True
        protocol = self._connection.protocol
        head = h11.Response(
            status_code=status, headers=[*headers, *self._connection_headers(), _date()]
        )
        data = protocol.send(head) or b""
        if first:
            data += protocol.send(h11.Data(data=first)) or b""
        await self._connection.write(data)

    async def send_chunk(self, data: bytes) -> None:
        if data:
            await self._connection.write(self._connection.protocol.send(h11.Data(data=data)) or b"")

    async def end_response(self, data: bytes = b"") -> None:
        protocol = self._connection.protocol
        out = (protocol.send(h11.Data(data=data)) or b"") if data else b""
        out += protocol.send(h11.EndOfMessage()) or b""
        await self._connection.write(out)

    async def wait_client_gone(self) -> None:
        """Return when the client closes its connection (call once the body has been read).
        Bytes of a pipelined next request are kept for it."""
        await self._connection.wait_closed_by_client()

    def _connection_headers(self) -> list[tuple[bytes, bytes]]:
        connection = self._connection
        if connection.server.draining or not connection.request_read():
            # Draining, or the request body was not read: this is the connection's last answer.
            return [_CLOSE]
        return []


class _Connection:
    """One client connection: its stream, its h11 state machine, and whether it is gone."""

    def __init__(self, server: "HttpServer", stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.protocol = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.limits.max_head_bytes
        )
        self.gone = False

    async def next_event(self) -> object:
        protocol = self.protocol
        while True:
            event = protocol.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.gone = True
            protocol.receive_data(bytes(data))

    def request_read(self) -> bool:
        """Whether the request has arrived whole, after taking what is already buffered (the end
        of a request without a body, or a body the handler did not ask for)."""
        protocol = self.protocol
        try:
            while protocol.their_state is h11.SEND_BODY:
                if protocol.next_event() is h11.NEED_DATA:
                    return False
        except h11.RemoteProtocolError:
            return False
        return protocol.their_state is h11.DONE

    async def respond(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        with_body: bool = True,
    ) -> None:
        """Head, Content-Length and body in one write (no body bytes for a HEAD request)."""
        protocol = self.protocol
        head = [*headers, (b"content-length", str(len(body)).encode()), _date()]
        data = protocol.send(h11.Response(status_code=status, headers=head)) or b""
        if with_body:
            data += protocol.send(h11.Data(data=body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        await self.write(data)

    async def write(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True

    async def wait_closed_by_client(self) -> None:
        while not self.gone:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.gone = True
            elif len(self.protocol.trailing_data[0]) < self.server.limits.max_head_bytes:
                self.protocol.receive_data(bytes(data))
            else:
                await trio.sleep_forever()

    async def close(self) -> None:
        """Close without destroying an answer in flight: shut our side, let the client's
        unread bytes drain briefly (closing with them unread would reset the connection)."""
        with trio.CancelScope(shield=True):
            if not self.gone:
                with trio.move_on_after(_LINGER_SECONDS):
                    try:
                        await self.stream.send_eof()
                        while await self.stream.receive_some(_RECEIVE_SIZE):
                            pass
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            await trio.aclose_forcefully(self.stream)


class HttpServer:
    """Serve `handler` on TCP listeners until `stop` returns, then drain."""

    def __init__(self, handler: Handler, limits: ServerLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.draining = False
        self._waiting_for_requests: set[trio.CancelScope] = set()

    async def serve(
        self,
        host: str,
        port: int,
        stop: Callable[[], Awaitable[object]],
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (OSError if that fails); `task_status` gets the server's URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(
                        trio.serve_listeners,
                        self._serve_connection,
                        listeners,
                        handler_nursery=connections,
                    )
                )
                task_status.started(_url(listeners[0]))
                await stop()
                accepting.cancel_scope.cancel()
            self.draining = True
            for waiting in self._waiting_for_requests:
                waiting.cancel()
            connections.cancel_scope.deadline = trio.current_time() + self.limits.drain_timeout

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        connection = _Connection(self, stream)
        try:
            while await self._serve_one_request(connection):
                connection.protocol.start_next_cycle()
        finally:
            await connection.close()

    async def _serve_one_request(self, connection: _Connection) -> bool:
        """Serve the connection's next request; False when the connection should close."""
        with trio.CancelScope(deadline=trio.current_time() + self.limits.header_timeout) as waiting:
            self._waiting_for_requests.add(waiting)
            if self.draining:
                waiting.cancel()
            try:
                request = await connection.next_event()
            except h11.RemoteProtocolError as exc:
                await _refuse_malformed(connection, exc)
                return False
            finally:
                self._waiting_for_requests.discard(waiting)
        if waiting.cancelled_caught or not isinstance(request, h11.Request):
            return False
        exchange = HttpExchange(connection, request)
        try:
            await self.handler(exchange)
        except Exception:
            log.exception("unexpected error serving %s %s", exchange.method, exchange.path)
            if exchange.response_started:
                return False
            await _answer_error(
                exchange, SopyError("the gateway failed on this request; see its log")
            )
        protocol = connection.protocol
        return (
            not connection.gone
            and not self.draining
            and protocol.our_state is h11.DONE
            and protocol.their_state is h11.DONE
        )


async def _refuse_malformed(connection: _Connection, exc: h11.RemoteProtocolError) -> None:
    if connection.protocol.our_state is not h11.IDLE or connection.gone:
        return
    error = InvalidRequest(f"malformed HTTP request: {exc}; send a valid HTTP/1.1 request")
    headers = [(b"content-type", b"application/json"), _CLOSE]
    await connection.respond(exc.error_status_hint, headers, orjson.dumps(error.openai_body()))


async def _answer_error(exchange: HttpExchange, error: SopyError) -> None:
    headers = [(b"content-type", b"application/json")]
    await exchange.respond(error.status, headers, orjson.dumps(error.openai_body()))


def _url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_CLOSE = (b"connection", b"close")


class _DateCache:
    """The Date header, formatted at most once a second."""

    second = -1
    header = (b"date", b"")


def _date() -> tuple[bytes, bytes]:
    now = int(time.time())
    if now != _DateCache.second:
        _DateCache.header = (b"date", email.utils.formatdate(now, usegmt=True).encode())
        _DateCache.second = now
    return _DateCache.header
