"""The upstream pools' HTTP/1.1 client against real sockets: TLS, keep-alive reuse, a backend
that drops kept-alive connections, refused certificates, backends whose heads break the limits,
and more than 1,024 file descriptors open."""

import contextlib
import logging
import os
import re
import resource
import ssl
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import attrs
import h11
import httpx
import pytest
import trio
import trustme

from sopy.protocol.client import (
    UpstreamBrokeOff,
    UpstreamConnectError,
    UpstreamConnections,
    UpstreamRequestRefused,
)
from sopy.routing.forwarded_headers import client_response_headers, upstream_request_headers
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, USER_KEY, access_log_line, chat, start_gateway

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


@attrs.define
class TinyBackend:
    """Answers every request with `hello <n>`; `keep_alive=False` closes after each answer
    without saying so, as a backend with a short keep-alive timeout does."""

    keep_alive: bool = True
    connections: int = 0
    requests: int = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        protocol = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    protocol.receive_data(data)
                elif isinstance(event, h11.EndOfMessage):
                    self.requests += 1
                    body = f"hello {self.requests}".encode()
                    headers = [("content-length", str(len(body)))]
                    reply = protocol.send(h11.Response(status_code=200, headers=headers))
                    reply += protocol.send(h11.Data(data=body)) + protocol.send(h11.EndOfMessage())
                    await stream.send_all(reply)
                    if not self.keep_alive:
                        return
                    protocol.start_next_cycle()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def serve_tls(nursery: trio.Nursery, backend: TinyBackend, ca: trustme.CA) -> int:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, backend.handle, 0, context, host="127.0.0.1")
    )
    port: int = listeners[0].transport_listener.socket.getsockname()[1]
    return port


async def serve_plain(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve `handler` over plain TCP on a free loopback port; the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def ask(connections: UpstreamConnections, url: str) -> bytes:
    response = await connections.send("POST", url, [(b"content-type", b"application/json")], b"{}")
    assert response.status == 200
    body = await response.read()
    await response.aclose()
    return body


async def test_https_backends_are_reached_over_tls_on_one_kept_alive_connection(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    backend = TinyBackend()
    port = await serve_tls(nursery, backend, ca)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with UpstreamConnections(5, tls=trust) as connections:
        answers = [await ask(connections, f"https://localhost:{port}/v1/x") for _ in range(3)]
    assert answers == [b"hello 1", b"hello 2", b"hello 3"]
    assert backend.connections == 1


async def test_an_untrusted_certificate_is_refused(nursery: trio.Nursery, ca: trustme.CA) -> None:
    port = await serve_tls(nursery, TinyBackend(), ca)
    async with UpstreamConnections(5) as connections:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await ask(connections, f"https://localhost:{port}/v1/x")


async def test_a_kept_alive_connection_the_backend_dropped_is_replaced_transparently(
    nursery: trio.Nursery,
) -> None:
    backend = TinyBackend(keep_alive=False)
    port = await serve_plain(nursery, backend.handle)
    async with UpstreamConnections(5) as connections:
        answers = [await ask(connections, f"http://127.0.0.1:{port}/v1/x") for _ in range(3)]
    assert answers == [b"hello 1", b"hello 2", b"hello 3"]
    assert backend.connections == 3


async def test_a_response_closed_before_its_end_is_not_reused(nursery: trio.Nursery) -> None:
    backend = TinyBackend()
    port = await serve_plain(nursery, backend.handle)
    async with UpstreamConnections(5) as connections:
        unread = await connections.send("GET", f"http://127.0.0.1:{port}/", [], b"")
        await unread.aclose()
        assert await ask(connections, f"http://127.0.0.1:{port}/") == b"hello 2"
    assert backend.connections == 2


async def test_connections_unused_for_the_idle_timeout_are_closed(nursery: trio.Nursery) -> None:
    backend = TinyBackend()
    port = await serve_plain(nursery, backend.handle)
    async with UpstreamConnections(5, idle_timeout=0.2) as connections:
        nursery.start_soon(connections.close_unused)
        assert await ask(connections, f"http://127.0.0.1:{port}/") == b"hello 1"
        await trio.sleep(0.5)
        assert await ask(connections, f"http://127.0.0.1:{port}/") == b"hello 2"
    assert backend.connections == 2


async def answer_once(reply: bytes, stream: trio.abc.Stream) -> None:
    """A backend that reads one request (head and Content-Length body), writes `reply` in two
    parts, and closes."""
    received = b""
    async with stream:
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        head, body = received.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
        middle = len(reply) // 2
        await stream.send_all(reply[:middle])
        await trio.sleep(0.01)
        await stream.send_all(reply[middle:])


async def serve_reply(nursery: trio.Nursery, reply: bytes) -> str:
    """Start an `answer_once` backend for `reply`; its URL."""
    return f"http://127.0.0.1:{await serve_plain(nursery, partial(answer_once, reply))}/"


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the connection closes",
            b"until the connection closes",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nLink: </trailer>\r\n\r\n",
            b"ok",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes", b"raw bytes"),
    ],
    ids=["chunked", "interim-1xx", "close-delimited", "trailer", "gzip-until-close"],
)
async def test_response_framings_are_read_to_their_end(
    nursery: trio.Nursery, reply: bytes, body: bytes
) -> None:
    url = await serve_reply(nursery, reply)
    async with UpstreamConnections(5) as connections:
        response = await connections.send("POST", url, [], b"{}")
        assert response.status == 200
        assert b"link" not in dict(response.headers)
        assert await response.read() == body
        await response.aclose()


async def test_a_body_cut_short_by_the_backend_is_an_error(nursery: trio.Nursery) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    url = await serve_reply(nursery, reply)
    async with UpstreamConnections(5) as connections:
        response = await connections.send("POST", url, [], b"{}")
        with pytest.raises(UpstreamBrokeOff):
            await response.read()
        await response.aclose()


async def test_a_header_with_a_line_break_is_never_written() -> None:
    async with UpstreamConnections(5) as connections:
        with pytest.raises(UpstreamRequestRefused, match="control character"):
            await connections.send(
                "POST", "http://127.0.0.1:9/", [(b"x-evil", b"a\r\nInjected: 1")], b""
            )


@pytest.mark.parametrize(
    "header",
    [
        (b"x-evil", b"a\rb"),
        (b"x-evil", b"a\nb"),
        (b"x-evil", b"a\x00b"),
        (b"x-evil\r\ninjected", b"1"),
        (b"x-evil\x00", b"1"),
    ],
)
async def test_no_header_with_a_cr_lf_or_nul_is_written(header: tuple[bytes, bytes]) -> None:
    headers = [(b"content-type", b"application/json"), header, (b"x-after", b"ok")]
    async with UpstreamConnections(5) as connections:
        with pytest.raises(UpstreamRequestRefused, match=re.escape(f"header {header[0]!r} holds")):
            await connections.send("POST", "http://127.0.0.1:9/", headers, b"")


async def test_a_switching_protocols_answer_is_a_broken_response(nursery: trio.Nursery) -> None:
    reply = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    url = await serve_reply(nursery, reply)
    async with UpstreamConnections(5) as connections:
        with pytest.raises(UpstreamBrokeOff):
            await connections.send("POST", url, [], b"{}")


async def answer_then_time_out(backend: TinyBackend, stream: trio.abc.Stream) -> None:
    """Answer one request keeping the connection, then, idle, send an unasked 408 and close,
    as some servers do when their keep-alive timeout ends."""
    backend.connections += 1
    async with stream:
        received = b""
        while not received.endswith(b"{}"):
            received += await stream.receive_some(65536)
        backend.requests += 1
        body = f"hello {backend.requests}".encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await trio.sleep(0.05)
        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")


async def test_an_unasked_answer_on_an_idle_connection_is_not_taken_for_the_next(
    nursery: trio.Nursery,
) -> None:
    backend = TinyBackend()
    url = f"http://127.0.0.1:{await serve_plain(nursery, partial(answer_then_time_out, backend))}/"
    async with UpstreamConnections(5) as connections:
        assert await ask(connections, url) == b"hello 1"
        await trio.sleep(0.2)
        assert await ask(connections, url) == b"hello 2"
    assert backend.connections == 2


@contextlib.contextmanager
def file_descriptors_held(count: int) -> Iterator[None]:
    """Hold `count` more file descriptors open (raising the soft RLIMIT_NOFILE to allow it), so
    that every socket opened meanwhile gets a number above them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit of {hard} open files is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    held: list[int] = []
    try:
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
        yield
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_kept_alive_connections_are_reused_with_more_than_1024_files_open(
    nursery: trio.Nursery,
) -> None:
    backend = TinyBackend()
    port = await serve_plain(nursery, backend.handle)
    with file_descriptors_held(1100):
        async with UpstreamConnections(5) as connections:
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            assert probe.socket.fileno() >= 1024  # so the client's sockets are above it too
            await probe.aclose()
            answers = [await ask(connections, f"http://127.0.0.1:{port}/") for _ in range(4)]
    assert answers == [b"hello 1", b"hello 2", b"hello 3", b"hello 4"]
    assert backend.connections == 2  # the probe's, and one kept alive for all four requests


async def test_the_gateway_keeps_answering_with_more_than_1024_files_open(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})
    with file_descriptors_held(1100):
        async with gateway.client() as http:
            answers = [await http.post("/v1/chat/completions", json=chat()) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@attrs.define
class EndlessHead:
    """A backend that answers every request with a head that never ends: header lines with
    `value_size`-byte values until the client hangs up or `limit` bytes are sent. It runs in
    the test's process, so it also notes the process's peak resident memory while it sends."""

    value_size: int
    limit: int = 100 * 1024 * 1024
    sent: int = 0
    peak_rss: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)

    async def handle(self, stream: trio.abc.Stream) -> None:
        lines = b"X-Endless: %b\r\n" % (b"e" * self.value_size) * 100
        try:
            async with stream:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += await stream.receive_some(65536)
                await stream.send_all(b"HTTP/1.1 200 OK\r\n")
                while self.sent < self.limit:
                    await stream.send_all(lines)
                    self.sent += len(lines)
                    self.peak_rss = max(self.peak_rss, resident_bytes())
        except trio.BrokenResourceError:
            pass  # the client hung up
        finally:
            self.done.set()


async def test_an_endless_response_head_is_cut_off_with_memory_bounded(
    nursery: trio.Nursery,
) -> None:
    backend = EndlessHead(value_size=1000)
    url = f"http://127.0.0.1:{await serve_plain(nursery, backend.handle)}/"
    before = resident_bytes()
    async with UpstreamConnections(5) as connections:
        with pytest.raises(UpstreamBrokeOff, match="response head is larger than 32768 bytes"):
            await connections.send("POST", url, [], b"{}")
    with trio.fail_after(10):
        await backend.done.wait()
    assert backend.sent < 16 * 1024 * 1024  # what the socket buffers held, not the 100 MiB
    assert backend.peak_rss - before < 32 * 1024 * 1024


async def test_a_backend_head_beyond_the_limits_reaches_the_client_as_a_502(
    sopy: SopyUnderTest, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    backend = EndlessHead(value_size=20)
    port = await serve_plain(nursery, backend.handle)
    async with await sopy.admin() as admin:
        await admin.ok("add_backend", provider="rogue", url=f"http://127.0.0.1:{port}", weight=1)
        await admin.ok("add_admin_auth", name="rogue", credentials="sk-rogue-credential")
        await admin.ok("add_model_mapping", model_name="rogue-model", provider="rogue")
        await admin.ok("add_user_api_key", api_key=USER_KEY, description="tests")
    async with httpx.AsyncClient(base_url=sopy.http_url, headers=AUTH) as http:
        response = await http.post("/v1/chat/completions", json=chat("rogue-model"))
    assert response.status_code == 502, response.text
    line = await access_log_line(caplog, response.headers["x-request-id"])
    assert "the response has more than 100 header fields" in line
    assert backend.sent < 16 * 1024 * 1024


@pytest.mark.parametrize(
    "connection",
    [
        [(b"connection", b"keep-alive"), (b"connection", b"X-Hop")],
        [(b"connection", b"X-Hop"), (b"connection", b"keep-alive")],
        [(b"connection", b"Keep-Alive, x-hop")],
        [(b"connection", b"close, X-Hop ,")],
    ],
)
def test_headers_listed_in_any_connection_header_stay_on_their_hop(
    connection: list[tuple[bytes, bytes]],
) -> None:
    """`Connection: keep-alive` alone is skipped without parsing options; any other list is
    read whole, in both directions."""
    message = [*connection, (b"x-hop", b"secret"), (b"x-kept", b"1")]
    assert client_response_headers(message) == [(b"x-kept", b"1")]
    forwarded = upstream_request_headers(message, None)
    assert forwarded == [(b"x-kept", b"1"), (b"accept-encoding", b"identity")]


def test_headers_a_backend_lists_in_connection_are_not_relayed() -> None:
    upstream = [
        (b"connection", b"X-Backend-Hop"),
        (b"x-backend-hop", b"internal"),
        (b"content-type", b"application/json"),
    ]
    assert client_response_headers(upstream) == [(b"content-type", b"application/json")]
