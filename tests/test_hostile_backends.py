"""Backends that answer too much, too slowly or with nonsense: the gateway's memory stays bounded,
its timeouts mean what they say, and the client gets a clean answer.

Memory is the test process's RSS (gateway, mock upstream and client all run here), sampled while
the request runs; each test prints it, for the record, when run with `-s`."""

import logging
from typing import Any

import attrs
import httpx
import pytest
import trio

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, Gateway, access_log_line, chat, start_gateway_with
from tests.process_memory import rss_peak

MiB = 1024 * 1024
LIMIT = 1 * MiB
HUGE = 512 * MiB
# RSS may grow this much for reasons of its own (allocator arenas, socket buffers, imports).
ALLOWED_GROWTH = 48 * MiB


async def start(nursery: trio.Nursery, settings: Settings, upstream: MockUpstream) -> Gateway:
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()
    return await start_gateway_with(sopy, nursery, {"openai": [upstream]}, {"gpt-4.1": "openai"})


async def post(gateway: Gateway, body: dict[str, Any], within: float = 30) -> httpx.Response:
    async with httpx.AsyncClient(headers=AUTH, timeout=within) as client:
        with trio.fail_after(within):
            return await client.post(f"{gateway.base_url}/chat/completions", json=body)


@pytest.mark.parametrize("length_unknown", [True, False], ids=["chunked", "content-length"])
async def test_a_huge_body_is_cut_off_at_the_limit_with_a_502(
    nursery: trio.Nursery, settings: Settings, length_unknown: bool
) -> None:
    upstream = MockUpstream("hostile")
    gateway = await start(nursery, attrs.evolve(settings, max_response_bytes=LIMIT), upstream)

    async with rss_peak() as memory:
        body = chat(mock={"body_bytes": HUGE, "length_unknown": length_unknown})
        response = await post(gateway, body)
    print(f"\n{HUGE // MiB} MiB body, limit {LIMIT // MiB} MiB: {memory}")

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_response_too_large"
    assert f"{LIMIT}-byte limit" in error["message"]
    assert "--max-response-bytes" in error["message"]
    assert len(upstream.requests) == 1, "an answer too large is not asked for again"
    # Reading stopped at the limit: the backend got no further than what socket buffers hold.
    assert upstream.padding_sent < 64 * MiB
    assert memory.growth < ALLOWED_GROWTH, memory


async def test_an_endless_sse_line_streams_through_without_memory_growth(
    nursery: trio.Nursery, settings: Settings
) -> None:
    line_bytes = 128 * MiB
    upstream = MockUpstream("endless")
    # The limit on buffered bodies does not apply to streams, which are never buffered.
    gateway = await start(nursery, attrs.evolve(settings, max_response_bytes=LIMIT), upstream)

    received = 0
    async with rss_peak() as memory, httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        body = chat(stream=True, mock={"endless_line_bytes": line_bytes})
        with trio.fail_after(60):
            async with client.stream(
                "POST", f"{gateway.base_url}/chat/completions", json=body
            ) as response:
                assert response.status_code == 200
                async for piece in response.aiter_raw():
                    received += len(piece)
    print(f"\none {line_bytes // MiB} MiB SSE line streamed through: {memory}")

    assert received == line_bytes
    assert memory.growth < ALLOWED_GROWTH, memory


async def test_a_slow_but_steady_body_is_not_cut_by_the_idle_timeout(
    nursery: trio.Nursery, settings: Settings
) -> None:
    upstream = MockUpstream("slow")
    gateway = await start(nursery, attrs.evolve(settings, idle_timeout=0.6), upstream)
    pieces, gap = 6, 0.2  # never silent for 0.6 s, yet 1 s in all

    began = trio.current_time()
    body = chat(mock={"body_bytes": pieces * 65536, "chunk_delay": gap})
    response = await post(gateway, body)

    assert response.status_code == 200
    assert len(response.content) == pieces * 65536
    assert trio.current_time() - began >= (pieces - 1) * gap
    assert len(upstream.requests) == 1, "the upstream work was done once"


async def test_a_body_that_falls_silent_is_cut_by_the_idle_timeout(
    nursery: trio.Nursery, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    upstream = MockUpstream("stalling")
    gateway = await start(nursery, attrs.evolve(settings, idle_timeout=0.3, retries=0), upstream)

    body = chat(mock={"body_bytes": 2 * 65536, "chunk_delay": 5})
    response = await post(gateway, body, within=3)

    assert response.status_code == 502
    line = await access_log_line(caplog, response.headers["x-request-id"])
    assert "sent no more of its response within 0.3 s" in line


@pytest.mark.parametrize(
    "retry_after", ["\u00b2", "1.5", "-3", "soon", "Sun, 31 Feb 2100 00:00:00 GMT"]
)
async def test_a_malformed_retry_after_counts_as_none(
    nursery: trio.Nursery,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    retry_after: str,
) -> None:
    caplog.set_level(logging.ERROR)
    upstream = MockUpstream("garbled")
    gateway = await start(nursery, settings, upstream)

    response = await post(gateway, chat(mock={"status": 429, "retry_after": retry_after}))

    assert response.status_code == 429
    assert response.headers["retry-after"] == retry_after
    assert not [r for r in caplog.records if "unexpected failure" in r.getMessage()]
    follow_up = await post(gateway, chat())
    assert follow_up.status_code == 200, "the backend was not held off by a value it never gave"


async def test_a_huge_retry_after_rests_the_backend_no_longer_than_the_longest_cooldown(
    nursery: trio.Nursery, settings: Settings
) -> None:
    upstream = MockUpstream("greedy")
    gateway = await start(nursery, settings, upstream)

    first = await post(gateway, chat(mock={"status": 429, "retry_after": "9" * 400}))
    assert first.status_code == 429
    second = await post(gateway, chat())

    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert 59 <= int(second.headers["retry-after"]) <= 60
    assert len(upstream.requests) == 1
