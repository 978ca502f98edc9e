"""A lean HTTP/1.1 client for the upstream pools: keep-alive connections per backend origin over
trio TCP streams (TLS for https), framed with h11, response bodies handed over as raw bytes
(transfer framing removed, content encoding kept, as they are relayed).

It does only what a pool needs, so a request costs a fraction of what a general-purpose client
spends: httpx's layers and httpcore's pool, which rescans every connection on each request, were
the largest library cost on the proxy path (see bench/README.md). Connections unused for
`idle_timeout` are closed by `close_unused`. Timeouts other than connecting are the caller's
cancel scopes; a response that is cancelled or not read to its end closes its
connection instead of returning it to the pool.
"""

import ssl
import urllib.parse
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import attrs
import h11
import trio

_RECEIVE_SIZE = 65536


class UpstreamConnectError(Exception):
    """No connection to the backend could be made."""


class UpstreamConnectTimeout(UpstreamConnectError):
    """The backend did not accept a connection within the connect timeout."""


class UpstreamBrokeOff(Exception):
    """The connection failed or the backend broke the protocol after the request was sent."""


@attrs.frozen
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
    protocol: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    async def next_event(self) -> Any:
        while True:
            try:
                event = self.protocol.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamBrokeOff(f"the backend broke HTTP/1.1: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise UpstreamBrokeOff(f"the connection failed: {exc}") from exc
            self.protocol.receive_data(bytes(data))

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


class UpstreamResponse:
    """A response whose head has arrived; read its body, then `aclose()` it."""

    def __init__(
        self, connections: "UpstreamConnections", connection: _Connection, head: h11.Response
    ) -> None:
        self.status: int = head.status_code
        self.headers: list[tuple[bytes, bytes]] = list(head.headers)
        self._connections = connections
        self._connection: _Connection | None = connection
        self._complete = False

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        assert self._connection is not None, "the response was closed"
        while True:
            event = await self._connection.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
                return
            else:
                raise UpstreamBrokeOff("the backend closed the connection mid-response")

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        protocol = connection.protocol
        reusable = (
            self._complete and protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
        )
        if reusable:
            protocol.start_next_cycle()
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
    ) -> None:
        self._connect_timeout = connect_timeout
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
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send a request and return once the response head has arrived."""
        origin, target = _split(url)
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                (b"host", origin.host_header),
                *headers,
                (b"content-length", str(len(body)).encode()),
            ],
        )
        reused = self._take_idle(origin)
        if reused is not None:
            try:
                return await self._exchange(reused, request, body)
            except UpstreamBrokeOff:
                # The backend closed the kept-alive connection before answering on it.
                await reused.close()
        return await self._exchange(await self._connect(origin), request, body)

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

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        return idle.pop() if idle else None

    async def _exchange(
        self, connection: _Connection, request: h11.Request, body: bytes
    ) -> UpstreamResponse:
        protocol = connection.protocol
        data = protocol.send(request) or b""
        data += protocol.send(h11.Data(data=body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        try:
            try:
                await connection.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise UpstreamBrokeOff(f"the connection failed: {exc}") from exc
            while True:
                event = await connection.next_event()
                if isinstance(event, h11.Response):
                    return UpstreamResponse(self, connection, event)
                if not isinstance(event, h11.InformationalResponse):
                    raise UpstreamBrokeOff("the backend closed the connection without answering")
        except BaseException:
            await connection.close()
            raise

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme == "https":
                    tls = trio.SSLStream(
                        stream, self._tls, server_hostname=origin.host, https_compatible=True
                    )
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise UpstreamConnectTimeout(
                f"no connection within {self._connect_timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            # trio reports a failed TLS handshake as BrokenResourceError caused by the SSLError.
            reason = exc.__cause__ or exc
            raise UpstreamConnectError(str(reason) or type(reason).__name__) from exc
        return _Connection(origin, stream)


def _split(url: str) -> tuple[Origin, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    assert parts.hostname is not None, url
    return Origin(scheme, parts.hostname, port), target
