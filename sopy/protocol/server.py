"""Sopy's HTTP/1.1 server for the public API: one task per connection over trio sockets, its
requests handled in that task one after another (keep-alive, pipelining); parsing is
`sopy.protocol.parser`'s, framing `sopy.protocol.wire`'s. The application gives a handler per
exchange and `render_error`, which shapes the answers the server gives itself.

It owns the connection-level rules: a request head must arrive within `header_timeout` (which
also bounds how long a connection may sit idle between requests) and within the head limits; a
client that leaves a response write blocked for `send_timeout` is disconnected; a malformed
request gets a 4xx/5xx from `render_error` and the connection is closed; `Expect: 100-continue`
is answered only when the handler starts reading the body; a response sent before the request
body has arrived closes the connection after it; and on `stop` the listeners close, idle
connections close, and busy ones finish their current request (for up to `drain_timeout`).

Why not hypercorn, or h11: on the 2-core bench machine hypercorn alone spends ~0.5 ms of CPU
per request for a no-op ASGI app (a per-request app task, a restarted idle-timer task, a lock
and a separate socket write per ASGI message), h11 on trio ~0.15 ms, of which ~50 us is h11's
parsing and framing, which httptools does in ~3 us (see bench/README.md).
"""

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

import attrs
import trio

from sopy.protocol.errors import HttpError, ProtocolError
from sopy.protocol.events import Data, Header, Request
from sopy.protocol.headers import first_value
from sopy.protocol.parser import HeadLimits, RequestParser
from sopy.protocol.replay_stream import ReplayStream
from sopy.protocol.wire import (
    CONTINUE,
    LAST_CHUNK,
    chunk,
    complete_response,
    has_body,
    streamed_response_head,
)

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536
_LINGER_SECONDS = 1.0
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://[^/?#]*")


class ClientGone(HttpError):
    """The client closed its connection before its request had arrived."""


@attrs.frozen
class ServerLimits:
    header_timeout: float
    drain_timeout: float
    send_timeout: float
    head: HeadLimits = attrs.field(factory=HeadLimits)


Handler = Callable[["HttpExchange"], Awaitable[None]]
RenderError = Callable[[int, str], tuple[Sequence[Header], bytes]]
"""The headers and body of an error answer, given its status and what went wrong: the
application decides what its errors look like."""


class HttpExchange:
    """One request and the response to it. Send either `respond` once, or `start_response`,
    any number of `send_chunk` and one `end_response`. Headers set in `common_headers` before
    the response starts go with it, whichever way it is sent."""

    def __init__(self, connection: "_Connection", request: Request, ordinal: int) -> None:
        self._connection = connection
        self._request = request
        self._ordinal = ordinal  # the request's number on its connection, from 1
        self.method = request.method.decode("ascii")
        target = _origin_form(request.target).decode("latin-1")
        self.raw_path, _, self.query = target.partition("?")
        self.path = urllib.parse.unquote(self.raw_path)
        self.headers: Sequence[Header] = request.headers
        self.common_headers: Sequence[Header] = ()
        # When the request head was parsed, when the response head was written, and the seconds
        # spent meanwhile waiting on others: the request body (counted here) and whatever the
        # application waits for (it adds that): what an application's own time is measured by.
        self.received_at = trio.current_time()
        self.answered_at: float | None = None
        self.waited = 0.0
        self.response_started = False
        self.response_finished = False
        self.last_on_connection = False
        self._keep_alive = request.keep_alive
        self._expects_continue = request.expects_continue
        self._body_read = False
        self._body_allowed = self.method != "HEAD"
        self._chunked = request.http_version == b"1.1"

    @property
    def target(self) -> str:
        """The path and query as the client sent them, undecoded."""
        return f"{self.raw_path}?{self.query}" if self.query else self.raw_path

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        return first_value(self.headers, name)

    async def read_body_chunk(self) -> bytes | None:
        """The next piece of the request body; None once it is complete. Raises
        `ProtocolError` if the body breaks HTTP/1.1, `ClientGone` if the client left."""
        if self._body_read:
            return None
        connection = self._connection
        events = connection.parser.events
        while not events:
            if connection.failure is not None:
                raise connection.failure
            if connection.gone:
                raise ClientGone
            if self._expects_continue:
                self._expects_continue = False
                await connection.write(CONTINUE)
            waiting_since = trio.current_time()
            await connection.receive()
            self.waited += trio.current_time() - waiting_since
        event = events.popleft()
        if isinstance(event, Data):
            return event.data
        self._body_read = True  # EndOfMessage: what follows is the next request's
        return None

    async def respond(self, status: int, headers: Sequence[Header], body: bytes) -> None:
        """A complete response: `headers`, Content-Length, then `body`."""
        close = self._begin_response()
        if self.common_headers:
            headers = [*headers, *self.common_headers]
        self.response_finished = True
        await self._connection.write(
            complete_response(status, headers, body, include_body=self._body_allowed, close=close)
        )

    async def start_response(
        self, status: int, headers: Sequence[Header], first: bytes = b""
    ) -> None:
        """The head of a response whose body follows in pieces, with the `first` piece in the
        same write."""
        close = self._begin_response()
        if self.common_headers:
            headers = [*headers, *self.common_headers]
        self._body_allowed = self._body_allowed and has_body(status)
        data = streamed_response_head(status, headers, chunked=self._chunked, close=close)
        await self._connection.write(data + self._framed(first))

    async def send_chunk(self, data: bytes) -> None:
        if data:
            await self._connection.write(self._framed(data))

    async def end_response(self, data: bytes = b"") -> None:
        self.response_finished = True
        last = LAST_CHUNK if self._chunked and self._body_allowed else b""
        await self._connection.write(self._framed(data) + last)

    async def wait_client_gone(self) -> None:
        """Return when the client closes its connection (call once the body has been read).
        Bytes of a pipelined next request are kept for it."""
        await self._connection.wait_closed_by_client()

    def take_over(self) -> trio.abc.Stream:
        """Hand the connection to another protocol (a websocket upgrade) instead of answering:
        the stream returned reads this request's head again (as the other protocol's
        handshake), then whatever the client sends next. Its writes are watched like the
        server's own: one left blocked for `send_timeout` disconnects the client. The server
        sends nothing more on the connection and closes it once the handler returns."""
        self.response_started = self.response_finished = self.last_on_connection = True
        self.answered_at = trio.current_time()
        request = self._request
        head = b"%s %s HTTP/%s\r\n" % (request.method, request.target, request.http_version)
        head += b"".join(b"%s: %s\r\n" % header for header in request.headers) + b"\r\n"
        stream = _TakenOverStream(self._connection)
        stream.unread(head)
        return stream

    def _framed(self, data: bytes) -> bytes:
        if not self._body_allowed:
            return b""
        return chunk(data) if self._chunked else data

    def _begin_response(self) -> bool:
        """Note that the response has started; whether it must say `connection: close`."""
        self.response_started = True
        self.answered_at = trio.current_time()
        connection = self._connection
        self.last_on_connection = (
            connection.server.draining
            or not self._keep_alive
            or connection.parser.messages_ended < self._ordinal
            or not self._chunked
        )
        # Draining, a request not read whole, or the client asked: the connection's last answer.
        return self.last_on_connection


class _TakenOverStream(ReplayStream):
    """A connection handed to another protocol: its writes mark the connection as writing, so
    the watchdog cuts off a client that stops reading, as it does for HTTP answers."""

    def __init__(self, connection: "_Connection") -> None:
        super().__init__(connection.stream)
        self._connection = connection

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        connection = self._connection
        connection.writing_since = trio.current_time()
        try:
            await super().send_all(data)
        finally:
            connection.writing_since = None


class _Connection:
    """One client connection: its stream, its parser, whether it is gone, and the parse error
    that ends it once the requests before the error are served."""

    def __init__(self, server: "HttpServer", stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.parser = RequestParser(server.limits.head)
        self.requests_taken = 0
        self.gone = False
        self.failure: ProtocolError | None = None
        self.writing_since: float | None = None
        self.waiting_for_request: trio.CancelScope | None = None  # idle: drain may close it

    async def next_request(self) -> Request | None:
        """The next request whose head has arrived, or None if the client closed first. What
        is left of the previous request's body, unread by its handler, is dropped."""
        events = self.parser.events
        while True:
            while not events:
                if self.failure is not None:
                    raise self.failure
                if self.gone:
                    return None
                await self.receive()
            event = events.popleft()
            if isinstance(event, Request):
                self.requests_taken += 1
                return event

    async def receive(self) -> None:
        """Feed the parser the client's next bytes (or note that it is gone)."""
        self._feed(await self._receive_some())

    def _feed(self, data: bytes) -> None:
        if data and self.failure is None:
            try:
                self.parser.feed(data)
            except ProtocolError as exc:
                self.failure = exc

    async def write(self, data: bytes) -> None:
        """Send `data`. A write that stays blocked is cut off by the server's watchdog (see
        `HttpServer._cut_off_stalled_clients`), not by a cancel scope per write."""
        if self.gone or not data:
            return
        self.writing_since = trio.current_time()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
        finally:
            self.writing_since = None

    async def cut_off(self) -> None:
        """Disconnect a client that is not reading: a blocked `write` and a task waiting in
        `wait_closed_by_client` both end at once."""
        self.gone = True
        await trio.aclose_forcefully(self.stream)

    async def wait_closed_by_client(self) -> None:
        fed = 0
        while not self.gone:
            data = await self._receive_some()
            fed += len(data)
            if fed > self.server.limits.head.max_bytes and self.failure is None:
                # Bytes are dropped from here on: the requests queued so far are the last.
                self.failure = ProtocolError(
                    400, "more was pipelined than the server holds; wait for each answer"
                )
            self._feed(data)

    async def _receive_some(self) -> bytes:
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.gone = True
        return bytes(data)

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


class AcceptBalance(Protocol):
    """Several processes accepting from one listening socket, kept even: each counts the
    connections it accepted and closed, and waits its turn before accepting while it holds more
    than the others (briefly: a process that does not accept cannot hold up the rest)."""

    def accepted(self) -> None: ...

    def closed(self) -> None: ...

    async def wait_turn(self) -> None: ...


class _TakingTurns(trio.abc.Listener[trio.SocketStream]):
    def __init__(self, listener: trio.SocketListener, balance: AcceptBalance) -> None:
        self._listener = listener
        self._balance = balance

    async def accept(self) -> trio.SocketStream:
        await self._balance.wait_turn()
        stream = await self._listener.accept()
        # Counted at once: the next accept of a burst already sees it.
        self._balance.accepted()
        return stream

    async def aclose(self) -> None:
        await self._listener.aclose()


class HttpServer:
    """Serve `handler` on TCP listeners until `stop` returns, then drain. With `balance`, the
    listeners are shared with other processes that take turns accepting (`AcceptBalance`)."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        render_error: RenderError,
        balance: AcceptBalance | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.render_error = render_error
        self.draining = False
        self._connections: set[_Connection] = set()
        self._balance = balance

    async def serve(
        self,
        host: str,
        port: int,
        stop: Callable[[], Awaitable[object]],
        *,
        listeners: Sequence[trio.SocketListener] | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (OSError if that fails), or accept on `listeners` already
        listening (sockets a worker process inherited); `task_status` gets the server's URL."""
        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as watchdog:
            watchdog.start_soon(self._cut_off_stalled_clients)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    balance = self._balance
                    taken: list[trio.abc.Listener[trio.SocketStream]] = (
                        list(listeners)
                        if balance is None
                        else [_TakingTurns(listener, balance) for listener in listeners]
                    )
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            self._serve_connection,
                            taken,
                            handler_nursery=connections,
                        )
                    )
                    task_status.started(_url(listeners[0]))
                    await stop()
                    accepting.cancel_scope.cancel()
                self.draining = True
                for connection in self._connections:
                    if connection.waiting_for_request is not None:
                        connection.waiting_for_request.cancel()
                connections.cancel_scope.deadline = trio.current_time() + self.limits.drain_timeout
            watchdog.cancel_scope.cancel()

    async def _cut_off_stalled_clients(self) -> None:
        """Forever: disconnect clients that left a response write blocked for `send_timeout`
        (checked four times per timeout, so the cut comes within 1.25 x `send_timeout`)."""
        timeout = self.limits.send_timeout
        while True:
            await trio.sleep(timeout / 4)
            cutoff = trio.current_time() - timeout
            for connection in list(self._connections):
                since = connection.writing_since
                if since is not None and since <= cutoff and not connection.gone:
                    log.info(
                        "a client left its response unread for %g s; disconnecting it", timeout
                    )
                    await connection.cut_off()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        connection = _Connection(self, stream)
        self._connections.add(connection)
        try:
            while await self._serve_one_request(connection):
                pass
        finally:
            self._connections.discard(connection)
            if self._balance is not None:
                self._balance.closed()
            await connection.close()

    async def _serve_one_request(self, connection: _Connection) -> bool:
        """Serve the connection's next request; False when the connection should close."""
        with trio.CancelScope(deadline=trio.current_time() + self.limits.header_timeout) as waiting:
            connection.waiting_for_request = waiting
            if self.draining:
                waiting.cancel()
            try:
                request = await connection.next_request()
            except ProtocolError as exc:
                await self._refuse(connection, exc)
                return False
            finally:
                connection.waiting_for_request = None
        if waiting.cancelled_caught or request is None:
            return False
        exchange = HttpExchange(connection, request, connection.requests_taken)
        try:
            await self.handler(exchange)
        except Exception:
            # The path is the client's (percent-decoded): escaped and capped, like every such value.
            log.exception("unexpected error serving %s %.200r", exchange.method, exchange.path)
            if exchange.response_started:
                return False
            headers, body = self.render_error(500, "the server failed on this request; see its log")
            await exchange.respond(500, headers, body)
        return (
            exchange.response_finished
            and not exchange.last_on_connection
            and not connection.gone
            and not self.draining
        )

    async def _refuse(self, connection: _Connection, error: ProtocolError) -> None:
        """Answer a request that broke HTTP/1.1, then close."""
        headers, body = self.render_error(error.status, str(error))
        await connection.write(complete_response(error.status, headers, body, close=True))


def _origin_form(target: bytes) -> bytes:
    """The path and query of a request target; an absolute-form target (`http://host/path`,
    as sent to proxies) names the resource as well as its origin-form does (RFC 9112 3.2.2)."""
    if target[:1] == b"/":
        return target
    absolute = _ABSOLUTE_FORM.match(target)
    if absolute is None:
        return target  # asterisk or authority form: no resource path
    path = target[absolute.end() :]
    return path if path[:1] == b"/" else b"/" + path


def _url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
