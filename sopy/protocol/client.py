"""A lean HTTP/1.1 client for the upstream pools: keep-alive connections per backend origin over
trio TCP streams (TLS for https); requests are written in one piece, responses parsed by
`sopy.protocol.parser` (heads bounded in size and header count, as the server bounds requests),
bodies handed over as raw bytes (transfer framing removed, content encoding kept, as they are
relayed). Every error it raises is an `HttpError`.

It does only what a pool needs, so a request costs a fraction of what a general-purpose client
spends: httpx's layers and httpcore's pool, which rescans every connection on each request, were
the largest library cost on the proxy path, and h11 spent ~50 us per exchange where httptools
spends ~3 us (see bench/README.md). Connections unused for `idle_timeout` are closed by
`close_unused`. Timeouts other than connecting are the caller's cancel scopes; a response that
is cancelled or not read to its end closes its connection instead of returning it to the pool.
It does not speak to egress proxies (no CONNECT, no HTTP(S)_PROXY): backends are reached directly.
"""

import functools
import re
import select
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from types import TracebackType
from typing import NoReturn

import attrs
import trio

from sopy.protocol.errors import HttpError, ProtocolError
from sopy.protocol.events import Data, Event, Header, Response
from sopy.protocol.headers import first_value
from sopy.protocol.parser import HeadLimits, ResponseParser

_RECEIVE_SIZE = 65536
_UNSAFE = re.compile(rb"[\x00\r\n]")
# A body this small rides in the head's write; a larger one is sent from where it lies, as a copy
# of a multi-MiB body would double what each request in flight holds.
_COPY_BODIES_BELOW = 64 * 1024


class UpstreamConnectError(HttpError):
    """No connection to the backend could be made."""


class UpstreamConnectTimeout(UpstreamConnectError):
    """The backend did not accept a connection within the connect timeout."""


class UpstreamRequestRefused(HttpError):
    """The request cannot be written safely (a header holds a control character)."""


class UpstreamBrokeOff(HttpError):
    """The connection failed or the backend broke the protocol (or the head limits) after the
    request was sent."""


@attrs.frozen(cache_hash=True)  # the key of the idle connections, looked up per request
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()


@attrs.define(eq=False)
class _Connection:
    origin: Origin
    stream: trio.abc.Stream
    # Polls a plain TCP connection's socket for the staleness check: made once per connection,
    # so that each reuse costs one poll call, not a poll object's creation and registration too.
    readable: "select.poll | None"
    parser: ResponseParser
    idle_since: float = 0.0
    closed_by_peer: bool = False
    received_any: bool = False
    failure: ProtocolError | None = None  # once set, the connection is not reused

    async def next_event(self, when_closed: str) -> Event:
        """The next event of the response under way; `UpstreamBrokeOff` (saying `when_closed`
        if the backend just closed) when there will be none."""
        events = self.parser.events
        while not events:
            if self.failure is not None:
                raise UpstreamBrokeOff(f"the backend broke HTTP/1.1: {self.failure}") from (
                    self.failure
                )
            if self.closed_by_peer:
                raise UpstreamBrokeOff(when_closed)
            await self.receive()
        return events.popleft()

    async def receive(self) -> None:
        """Feed the parser the next bytes from the backend."""
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamBrokeOff(f"the connection failed: {exc}") from exc
        try:
            if data:
                self.received_any = True
                self.parser.feed(data)
            else:
                self.closed_by_peer = True
                self.parser.feed_eof()
        except ProtocolError as exc:
            # Events before the error still count: an answer followed by junk is kept.
            self.failure = exc

    def looks_stale(self) -> bool:
        """Whether an idle plain connection has something to read: the backend closed it, or
        sent something unasked (e.g. a 408 on its own idle timeout). It is polled (not
        selected), so any file descriptor number works. TLS connections may carry session
        tickets, so they are not checked; a failed reuse is retried instead."""
        return self.readable is not None and bool(self.readable.poll(0))

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


class UpstreamResponse:
    """A response whose head has arrived; read its body, then `aclose()` it."""

    def __init__(
        self, connections: "UpstreamConnections", connection: _Connection, head: Response
    ) -> None:
        self.status = head.status
        self.headers = head.headers
        self._keep_alive = head.keep_alive
        self._connections = connections
        self._connection: _Connection | None = connection
        self._read_to_end = False

    def header(self, name: bytes) -> str | None:
        value = first_value(self.headers, name)
        return None if value is None else value.decode("latin-1")

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        connection = self._connection
        assert connection is not None, "the response was closed"
        events = connection.parser.events
        while True:
            event: Event | None = await connection.next_event(
                "the backend closed the connection mid-response"
            )
            pieces = []  # all the body that has arrived, handed over in one piece
            while isinstance(event, Data):
                pieces.append(event.data)
                event = events.popleft() if events else None
            if pieces:
                yield b"".join(pieces)
            if event is not None:  # the EndOfMessage
                self._read_to_end = True
                return

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        reusable = (
            self._read_to_end
            and self._keep_alive
            and connection.failure is None
            and not connection.closed_by_peer
            and not connection.parser.in_message
            and not connection.parser.events  # bytes beyond the answer to our one request
        )
        if reusable:
            await self._connections.keep(connection)
        else:
            await connection.close()


class UpstreamConnections:
    """Keep-alive connections to every backend of one provider."""

    def __init__(
        self,
        connect_timeout: float,
        max_idle_per_origin: int = 256,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float = 30.0,
        head_limits: HeadLimits | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._head_limits = head_limits or HeadLimits()
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls = tls or ssl.create_default_context()

    async def __aenter__(self) -> "UpstreamConnections":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.close()

    async def send(
        self, method: str, url: str, headers: list[Header], body: bytes
    ) -> UpstreamResponse:
        """Send a request and return once the response head has arrived."""
        origin, start = _request_start(method, url)
        request = _request_bytes(start, headers, body)
        reused = await self._take_idle(origin)
        if reused is not None:
            try:
                return await self._exchange(reused, request)
            except UpstreamBrokeOff:
                if reused.received_any:
                    raise
                # The backend closed the kept-alive connection without a byte of answer.
        return await self._exchange(await self._connect(origin), request)

    async def keep(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) < self._max_idle:
            connection.idle_since = trio.current_time()
            idle.append(connection)
        else:
            await connection.close()

    async def close_unused(self) -> None:
        """Forever: close connections nobody has used for `idle_timeout` seconds, so the number
        kept open follows current traffic rather than its past peak."""
        while True:
            await trio.sleep(self._idle_timeout / 2)
            cutoff = trio.current_time() - self._idle_timeout
            for origin, idle in list(self._idle.items()):
                # Kept connections are appended as they are freed, so the stale ones lead.
                stale = [c for c in idle if c.idle_since <= cutoff]
                self._idle[origin] = idle[len(stale) :]
                for connection in stale:
                    await connection.close()

    async def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.looks_stale():
                return connection
            await connection.close()
        return None

    async def _exchange(
        self, connection: _Connection, request: tuple[bytes, ...]
    ) -> UpstreamResponse:
        connection.received_any = False
        try:
            try:
                for piece in request:
                    await connection.stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise UpstreamBrokeOff(f"the connection failed: {exc}") from exc
            while True:
                event = await connection.next_event(
                    "the backend closed the connection without answering"
                )
                if isinstance(event, Response) and event.status >= 200:
                    return UpstreamResponse(self, connection, event)
                # An interim (1xx) answer, or its end: the final answer follows.
        except BaseException:
            await connection.close()
            raise

    async def _connect(self, origin: Origin) -> _Connection:
        readable: select.poll | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
                stream: trio.abc.Stream = tcp
                if origin.scheme == "http":
                    readable = select.poll()
                    readable.register(tcp.socket.fileno(), select.POLLIN)
                else:
                    tls = trio.SSLStream(
                        stream, self._tls, server_hostname=origin.host, https_compatible=True
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise UpstreamConnectTimeout(
                f"no connection within {self._connect_timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            # trio reports a failed TLS handshake as BrokenResourceError caused by the SSLError.
            reason = exc.__cause__ or exc
            raise UpstreamConnectError(str(reason) or type(reason).__name__) from exc
        return _Connection(origin, stream, readable, ResponseParser(self._head_limits))


@functools.lru_cache(maxsize=256)
def _request_start(method: str, url: str) -> tuple[Origin, bytes]:
    """Where a request for `url` goes, and its request line and Host header. Kept for the few
    (method, URL) pairs a gateway forwards to: splitting a URL costs more than the rest of the
    request's head."""
    origin, target = _split(url)
    return origin, f"{method} {target} HTTP/1.1\r\nhost: ".encode() + origin.host_header + b"\r\n"


def _request_bytes(start: bytes, headers: list[Header], body: bytes) -> tuple[bytes, ...]:
    """The whole request in the pieces to write: head with Content-Length framing, and body."""
    lines: list[bytes] = []
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    fields = b"".join(lines)
    # Each field line brings one CR and one LF: any other is in a name or value (as is a NUL).
    lines_count = len(headers)
    if fields.count(b"\n") != lines_count or fields.count(b"\r") != lines_count or b"\0" in fields:
        _refuse_unsafe(headers)
    framing = b"content-length: %d\r\n\r\n" % len(body)
    if len(body) >= _COPY_BODIES_BELOW:
        return b"".join((start, fields, framing)), body
    return (b"".join((start, fields, framing, body)),)


def _refuse_unsafe(headers: list[Header]) -> NoReturn:
    for name, value in headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise UpstreamRequestRefused(f"header {name!r} holds a control character")
    raise AssertionError("a header holds CR, LF or NUL")


def _split(url: str) -> tuple[Origin, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    assert parts.hostname is not None, url
    return Origin(scheme, parts.hostname, port), target
