"""Chaos: 2 000 requests at concurrency 50 against four backends, two of them failing at random.

Every request must end in a correct answer or a clean, OpenAI-shaped error, none may hang, and
the process's open file descriptors and memory must come back to where they were.
"""

import os
from collections import Counter

import attrs
import httpx
import orjson
import trio

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream, RandomFault
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, start_gateway_with
from tests.process_memory import rss_bytes

REQUESTS = 2000
WARM_UP = 200
CONCURRENCY = 50
PER_REQUEST_LIMIT = 15.0


def faults_drawn(upstreams: list[MockUpstream]) -> Counter[str]:
    return sum((Counter(upstream.injected) for upstream in upstreams), Counter())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def one_request(client: httpx.AsyncClient, number: int, outcomes: Counter[str]) -> None:
    stream = number % 2 == 0
    body = {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": f"request {number}"}],
        "stream": stream,
    }
    with trio.fail_after(PER_REQUEST_LIMIT):
        async with client.stream("POST", "/chat/completions", json=body) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    outcomes[judge(response.status_code, raw, stream, number)] += 1


def judge(status: int, raw: bytes, stream: bool, number: int) -> str:
    if status != 200:
        error = orjson.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"}, raw
        assert status in (429, 500, 502, 503, 504), status
        return "clean_error"
    if not stream:
        content = orjson.loads(raw)["choices"][0]["message"]["content"]
        assert content.endswith(f"you said request {number}"), content
        return "answer"
    events = [line for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    if events[-1] == "data: [DONE]":
        text = "".join(
            choice["delta"].get("content", "")
            for event in events[:-1]
            for choice in orjson.loads(event.removeprefix("data: "))["choices"]
        )
        assert text.strip().endswith(f"you said request {number}"), text
        return "answer"
    assert "error" in orjson.loads(events[-1].removeprefix("data: ")), events[-1]
    return "clean_error"


async def run_load(client: httpx.AsyncClient, first: int, count: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    numbers = iter(range(first, first + count))

    async def worker() -> None:
        for number in numbers:
            await one_request(client, number, outcomes)

    async with trio.open_nursery() as workers:
        for _ in range(CONCURRENCY):
            workers.start_soon(worker)
    return outcomes


async def test_chaos_every_request_is_answered_or_cleanly_refused_and_nothing_leaks(
    nursery: trio.Nursery, settings: Settings
) -> None:
    chaotic = attrs.evolve(
        settings,
        first_byte_timeout=0.5,
        idle_timeout=0.5,
        cooldown=0.2,
        cooldown_after=5,
        upstream_idle_timeout=1.0,
        log_level="warning",
    )
    sopy = SopyUnderTest(nursery, chaotic)
    await sopy.start()
    flaky = [
        MockUpstream(f"flaky-{i}", failure_rate=0.5, seed=i, hang_seconds=2.0) for i in range(2)
    ]
    steady = [MockUpstream(f"steady-{i}") for i in range(2)]
    gateway = await start_gateway_with(
        sopy, nursery, {"openai": [*steady, *flaky]}, {"gpt-4.1": "openai"}
    )
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers=AUTH, limits=limits, timeout=PER_REQUEST_LIMIT
    ) as client:
        await run_load(client, 0, WARM_UP)
        # Let every warm-up hang on the mocks run out and unused upstream connections close.
        await trio.sleep(2.5)
        fds_before, rss_before = open_fds(), rss_bytes()
        injected_before = faults_drawn(flaky)

        with trio.fail_after(180):
            outcomes = await run_load(client, WARM_UP, REQUESTS)
        await trio.sleep(2.5)
        fds_after, rss_after = open_fds(), rss_bytes()

    assert sum(outcomes.values()) == REQUESTS
    assert outcomes["answer"] >= REQUESTS * 0.9, outcomes
    # Five failures in a row (rather than the default three) trip a flaky backend, so it stays
    # in rotation and the measured requests meet every kind of fault many times over: 350 to
    # 385 faults in repeated runs. With three, the doubling cooldowns took it out of rotation
    # for most of the run and the count fell as low as 59.
    injected = faults_drawn(flaky) - injected_before
    assert injected.total() >= 150, injected
    assert set(injected) == {fault.value for fault in RandomFault}, injected
    assert fds_after <= fds_before + 4, (fds_before, fds_after)
    assert rss_after - rss_before < 40 * 1024 * 1024, (rss_before, rss_after)
