"""A crashing upstream pool is restarted; its in-flight requests get a 502, others carry on. A
failure inside one request's attempt fails that request only."""

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from sopy.actors import upstream_pool
from tests.conftest import SopyUnderTest
from tests.gateway import Gateway, chat, start_gateway

CRASH_MARKER = "please-crash-the-pool"


@pytest.fixture
def crash_on_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the pool itself meets an unexpected exception for marked requests."""
    original = upstream_pool._Exchange.run

    async def crashing_run(self: upstream_pool._Exchange) -> None:
        if CRASH_MARKER.encode() in self._request.body:
            raise RuntimeError("injected pool crash")
        await original(self)

    monkeypatch.setattr(upstream_pool._Exchange, "run", crashing_run)


@pytest.fixture
def fail_attempt_on_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: one attempt of a marked request meets an unexpected exception."""
    original = upstream_pool._Exchange._try

    async def failing_try(
        self: upstream_pool._Exchange, backend: str
    ) -> upstream_pool._Answer | upstream_pool.SopyError:
        if CRASH_MARKER.encode() in self._request.body:
            raise RuntimeError("injected attempt failure")
        return await original(self, backend)

    monkeypatch.setattr(upstream_pool._Exchange, "_try", failing_try)


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai", "claude-3": "anthropic"})


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
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
        marked = await client.post("/chat/completions", json=chat("gpt-4.1", CRASH_MARKER))
    return marked, lines


@pytest.mark.usefixtures("crash_on_marker")
async def test_a_crashed_pool_restarts_while_other_providers_keep_serving(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sopy.runtime.supervision")
    crashed, other_stream = await post_marked_while_streaming(client, "claude-3")
    assert crashed.status_code == 502
    assert crashed.json()["error"]["code"] == "upstream_error"
    assert other_stream[-1] == "data: [DONE]"

    with trio.fail_after(5):
        after = await client.post("/chat/completions", json=chat("gpt-4.1"))
    assert after.status_code == 200

    crashes = [r for r in caplog.records if "upstream pool openai crashed" in r.getMessage()]
    assert len(crashes) == 1
    assert crashes[0].exc_info is not None
    assert "injected pool crash" in str(crashes[0].exc_info[1])


@pytest.mark.usefixtures("fail_attempt_on_marker")
async def test_a_failing_attempt_fails_its_request_and_not_the_pool(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    failed, other_stream = await post_marked_while_streaming(client, "gpt-4.1")
    assert failed.status_code == 502
    assert other_stream[-1] == "data: [DONE]"
    failures = [r for r in caplog.records if "unexpected failure" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "injected attempt failure" in str(failures[0].exc_info[1])
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
