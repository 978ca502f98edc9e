"""Specs of `--limits redis://...`: per-key limits counted in a real Redis (or Valkey) hold
exactly across two Sopy instances, and a Redis that is down is answered as documented."""

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.cluster_servers import (
    Pair,
    PostgresServer,
    RedisServer,
    postgres,  # noqa: F401 (a fixture)
    redis,  # noqa: F401 (a fixture)
    start_pair,
    workdirs,  # noqa: F401 (a fixture)
)
from tests.conftest import SopyUnderTest
from tests.gateway import chat, start_gateway


@pytest.fixture
async def pair(
    nursery: trio.Nursery,
    postgres: PostgresServer,  # noqa: F811
    redis: RedisServer,  # noqa: F811
    workdirs: tuple[Path, Path],  # noqa: F811
) -> AsyncIterator[Pair]:
    async with start_pair(nursery, workdirs, store=postgres.url, limits=redis.url) as pair:
        await start_gateway(pair.a, nursery, {"gpt-4.1": "openai"})
        await pair.converged()
        yield pair


async def _limited_key(pair: Pair, api_key: str, **limits: object) -> None:
    async with await pair.a.admin() as admin:
        await admin.ok("add_user_api_key", api_key=api_key, description="limited", **limits)
    await pair.converged()


async def _post(
    sopy: SopyUnderTest, api_key: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sopy.http_url, timeout=30) as client:
        return await client.post(
            "/v1/chat/completions",
            json=body or chat(),
            headers={"authorization": f"Bearer {api_key}"},
        )


async def _statuses(requests: list[tuple[SopyUnderTest, str, dict[str, Any]]]) -> list[int]:
    """The statuses of sending every (instance, key, body) at once, sorted."""
    statuses: list[int] = []

    async def send(sopy: SopyUnderTest, key: str, body: dict[str, Any]) -> None:
        statuses.append((await _post(sopy, key, body)).status_code)

    async with trio.open_nursery() as senders:
        for request in requests:
            senders.start_soon(send, *request)
    return sorted(statuses)


async def test_an_rpm_of_20_across_two_instances_admits_exactly_20(pair: Pair) -> None:
    key = "sk-user-shared-rpm-0001"
    await _limited_key(pair, key, rpm=20)
    both = [(pair.a if number % 2 else pair.b, key, chat()) for number in range(30)]
    assert await _statuses(both) == [200] * 20 + [429] * 10


async def test_max_parallel_holds_across_two_instances_and_is_given_back(pair: Pair) -> None:
    key = "sk-user-shared-parallel-01"
    await _limited_key(pair, key, max_parallel=2)
    slow = chat(mock={"headers_delay": 0.5})
    both = [(pair.a if number % 2 else pair.b, key, slow) for number in range(6)]
    assert await _statuses(both) == [200, 200, 429, 429, 429, 429]
    for sopy in (pair.a, pair.b, pair.a, pair.b):
        assert (await _post(sopy, key)).status_code == 200


async def test_a_budget_spent_on_a_stops_the_key_on_b(pair: Pair) -> None:
    key = "sk-user-shared-budget-001"
    await _limited_key(pair, key, token_budget=10)
    spent = await _post(pair.a, key, chat(content="one two three four"))
    usage = spent.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] >= 10
    # A request's end reaches Redis just after its answer: A's next admission waits for it.
    for sopy in (pair.a, pair.b):
        stopped = await _post(sopy, key)
        assert stopped.status_code == 429
        assert stopped.json()["error"]["code"] == "insufficient_quota"


async def test_redis_down_refuses_a_closed_key_and_admits_an_open_one(
    pair: Pair,
    redis: RedisServer,  # noqa: F811
) -> None:
    closed, open_ = "sk-user-fails-closed-0001", "sk-user-fails-open-00001"
    await _limited_key(pair, closed, rpm=100)
    await _limited_key(pair, open_, rpm=100, limit_failure="open")
    await trio.to_thread.run_sync(redis.stop)

    refused = await _post(pair.b, closed)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "limit_store_unavailable"
    assert "limit store" in error["message"]
    assert (await _post(pair.b, open_)).status_code == 200
    assert (await _post(pair.a, "sk-user-test-key-0001")).status_code == 200

    await trio.to_thread.run_sync(redis.start)
    # The client reconnects by itself, at the next request.
    assert (await _post(pair.a, closed)).status_code == 200


async def test_limits_add_one_redis_round_trip(pair: Pair) -> None:
    """Measures a limited key's requests against an unlimited key's (printed with -s)."""
    limited = "sk-user-timed-limits-0001"
    await _limited_key(pair, limited, rpm=100_000, max_parallel=100)
    timings: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=pair.a.http_url) as client:
        for name, key in (("unlimited", "sk-user-test-key-0001"), ("limited", limited)) * 2:
            started = time.perf_counter()
            for _ in range(200):
                response = await client.post(
                    "/v1/chat/completions",
                    json=chat(),
                    headers={"authorization": f"Bearer {key}"},
                )
                assert response.status_code == 200
            timings[name] = (time.perf_counter() - started) / 200
    added = (timings["limited"] - timings["unlimited"]) * 1000
    print(
        f"per request: unlimited {timings['unlimited'] * 1000:.3f} ms, limited "
        f"{timings['limited'] * 1000:.3f} ms (+{added:.3f} ms)"
    )
