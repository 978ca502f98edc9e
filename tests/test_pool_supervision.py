"""A crashing upstream pool is restarted; its in-flight requests get a 502, others carry on. A
failure inside one request's attempt fails that request only.

Faults are injected through the pools' transport seam: the gateway runs with a transport that
wraps the real upstream connections and misbehaves on requests carrying a marker."""

import abc
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import httpx
import pytest
import trio

from sopy.actors.upstream_pool import OpenTransport, open_connections
from sopy.protocol.client import UpstreamResponse
from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.gateway import Gateway, chat, start_gateway

CRASH_MARKER = b"please-crash-the-pool"


class MarkedRequestTransport(abc.ABC):
    """The real upstream connections, except for requests whose body carries CRASH_MARKER,
    which `on_marked` handles."""

    def __init__(self, settings: Settings) -> None:
        self._real = open_connections(settings)

    async def __aenter__(self) -> Self:
        await self._real.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._real.__aexit__(exc_type, exc, traceback)

    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        if CRASH_MARKER in body:
            await self.on_marked()
        return await self._real.send(method, url, headers, body)

    async def close_unused(self) -> None:
        await self._real.close_unused()

    @abc.abstractmethod
    async def on_marked(self) -> None: ...


class CrashingTransport(MarkedRequestTransport):
    """A marked request breaks the transport's own task (which runs in the pool's nursery)
    while the request waits for its answer: the pool itself crashes."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._broken = trio.Event()

    async def on_marked(self) -> None:
        self._broken.set()
        await trio.sleep_forever()

    async def close_unused(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._real.close_unused)
            await self._broken.wait()
            raise RuntimeError("injected pool crash")


class FailingAttemptTransport(MarkedRequestTransport):
    """A marked request's attempt meets an unexpected exception."""

    async def on_marked(self) -> None:
        raise RuntimeError("injected attempt failure")


async def gateway_over(
    open_transport: OpenTransport, nursery: trio.Nursery, settings: Settings
) -> Gateway:
    sopy = SopyUnderTest(nursery, settings, open_transport=open_transport)
    await sopy.start()
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai", "claude-3": "anthropic"})


@pytest.fixture
async def crashing_client(
    nursery: trio.Nursery, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    gateway = await gateway_over(CrashingTransport, nursery, settings)
    async with gateway.client(gateway.base_url) as client:
        yield client


@pytest.fixture
async def failing_client(
    nursery: trio.Nursery, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    gateway = await gateway_over(FailingAttemptTransport, nursery, settings)
    async with gateway.client(gateway.base_url) as client:
        yield client


async def post_marked_while_streaming(
    client: httpx.AsyncClient, stream_model: str
) -> tuple[httpx.Response, list[str]]:
    """Post a marked gpt-4.1 request while a stream from `stream_model` is under way; the
    marked answer and the stream's lines."""
    lines: list[str] = []

    async def stream() -> None:
        body = chat(stream_model, stream=True, mock={"chunks": 20, "chunk_delay": 0.03})
        async with client.stream("POST", "/chat/completions", json=body) as response:
            lines.extend([line async for line in response.aiter_lines() if line])

    async with trio.open_nursery() as both:
        both.start_soon(stream)
        await trio.sleep(0.05)
        marked = await client.post("/chat/completions", json=chat("gpt-4.1", CRASH_MARKER.decode()))
    return marked, lines


async def test_a_crashed_pool_restarts_while_other_providers_keep_serving(
    crashing_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sopy.runtime.supervision")
    crashed, other_stream = await post_marked_while_streaming(crashing_client, "claude-3")
    assert crashed.status_code == 502
    assert crashed.json()["error"]["code"] == "upstream_error"
    assert other_stream[-1] == "data: [DONE]"

    with trio.fail_after(5):
        after = await crashing_client.post("/chat/completions", json=chat("gpt-4.1"))
    assert after.status_code == 200

    crashes = [r for r in caplog.records if "upstream pool openai crashed" in r.getMessage()]
    assert len(crashes) == 1
    assert crashes[0].exc_info is not None
    assert "injected pool crash" in str(crashes[0].exc_info[1])


async def test_a_failing_attempt_fails_its_request_and_not_the_pool(
    failing_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    failed, other_stream = await post_marked_while_streaming(failing_client, "gpt-4.1")
    assert failed.status_code == 502
    assert other_stream[-1] == "data: [DONE]"
    failures = [r for r in caplog.records if "unexpected failure" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "injected attempt failure" in str(failures[0].exc_info[1])
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
