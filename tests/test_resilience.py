"""Faults injected through the mock upstream: retries, failover, cooldown, timeouts, fallback."""

import logging
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream, RandomFault
from tests.conftest import SopyUnderTest
from tests.gateway import (
    AUTH,
    USER_KEY,
    Gateway,
    access_log_line,
    chat,
    request_id_in,
    start_gateway_with,
)
from tests.polling import eventually


def failing(name: str, *kinds: RandomFault, hang_seconds: float = 30.0) -> MockUpstream:
    return MockUpstream(name, failure_rate=1.0, fault_kinds=kinds, hang_seconds=hang_seconds)


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


async def start(
    nursery: trio.Nursery, settings: Settings, upstreams: dict[str, list[MockUpstream]], **kw: Any
) -> Gateway:
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()
    models = {"gpt-4.1": next(iter(upstreams))}
    return await start_gateway_with(sopy, nursery, upstreams, models, **kw)


async def stream_events(
    client: httpx.AsyncClient, gateway: Gateway, body: dict[str, Any]
) -> list[str]:
    """The `data:` lines of a streamed completion, which must end within 3 s."""
    with trio.fail_after(3):
        async with client.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body
        ) as response:
            return [line async for line in response.aiter_lines() if line.startswith("data:")]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("fault", "requests"), [(RandomFault.STATUS_500, 6), (RandomFault.STATUS_429, 4)]
)
async def test_a_500_or_429_is_retried_on_the_other_backend(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    fault: RandomFault,
    requests: int,
) -> None:
    broken, healthy = failing("broken", fault), MockUpstream("healthy")
    gateway = await start(nursery, settings, {"openai": [broken, healthy]})

    for _ in range(requests):
        response = await client.post(f"{gateway.base_url}/chat/completions", json=chat())
        assert response.status_code == 200
        assert response.headers["x-mock-upstream"] == "healthy"
    assert broken.injected[fault.value] >= 1


async def test_a_429_retry_after_is_honoured_before_trying_again(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, attrs.evolve(settings, retries=1), {"openai": [only]})

    began = trio.current_time()
    body = chat(mock={"status": 429, "retry_after": 1})
    response = await client.post(f"{gateway.base_url}/chat/completions", json=body)
    elapsed = trio.current_time() - began

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert len(only.requests) == 2
    assert 1.0 <= elapsed < 5.0


async def test_a_hanging_backend_is_abandoned_within_the_first_byte_timeout(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    hanging = failing("hanging", RandomFault.HANG)
    healthy = MockUpstream("healthy")
    fast = attrs.evolve(settings, first_byte_timeout=0.3, balance="round_robin")
    gateway = await start(nursery, fast, {"openai": [hanging, healthy]})

    for _ in range(2):
        began = trio.current_time()
        response = await client.post(f"{gateway.base_url}/chat/completions", json=chat())
        assert response.status_code == 200
        assert trio.current_time() - began < 2.0
    assert hanging.injected["hang"] >= 1


async def test_a_provider_that_only_hangs_gets_a_504_not_a_hang(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    hanging = failing("hanging", RandomFault.HANG)
    fast = attrs.evolve(settings, first_byte_timeout=0.2, retries=1)
    gateway = await start(nursery, fast, {"openai": [hanging]})
    with trio.fail_after(3):
        response = await client.post(f"{gateway.base_url}/chat/completions", json=chat())
    assert response.status_code == 504
    request_id = request_id_in(response.json()["error"]["message"])
    assert "sent no response within 0.2 s" in await access_log_line(caplog, request_id)


async def test_an_idle_stream_ends_with_an_sse_error_event(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    gateway = await start(
        nursery, attrs.evolve(settings, idle_timeout=0.3), {"openai": [MockUpstream("slow")]}
    )
    body = chat(stream=True, mock={"chunks": 5, "chunk_delay": 2})
    events = await stream_events(client, gateway, body)
    error = orjson.loads(events[-1].removeprefix("data: "))["error"]
    request_id = request_id_in(error["message"])
    assert "sent nothing for 0.3 s" in await access_log_line(caplog, request_id)


async def test_a_stream_past_the_total_timeout_is_ended_cleanly(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    gateway = await start(
        nursery, attrs.evolve(settings, total_timeout=0.5), {"openai": [MockUpstream("slow")]}
    )
    body = chat(stream=True, mock={"chunks": 50, "chunk_delay": 0.05})
    events = await stream_events(client, gateway, body)
    assert 3 < len(events) < 50
    request_id = request_id_in(events[-1])
    assert "total timeout of 0.5 s" in await access_log_line(caplog, request_id)


async def test_all_backends_down_gives_a_fast_503_and_the_log_names_them(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    sopy = SopyUnderTest(nursery, attrs.evolve(settings, cooldown_after=1, cooldown=30))
    await sopy.start()
    down = [dead_url(), dead_url()]
    async with await sopy.admin() as admin:
        for url in down:
            await admin.ok("add_backend", provider="down", url=url)
        await admin.ok("add_model_mapping", model_name="gpt-4.1", provider="down")
        await admin.ok("add_user_api_key", api_key=USER_KEY)
    base = sopy.http_url

    first = await client.post(f"{base}/v1/chat/completions", json=chat())
    assert first.status_code == 502

    began = trio.current_time()
    second = await client.post(f"{base}/v1/chat/completions", json=chat())
    assert trio.current_time() - began < 0.1
    assert second.status_code == 503
    assert 29 <= int(second.headers["retry-after"]) <= 30
    message = second.json()["error"]["message"]
    assert "resting" in message
    assert not any(url in message for url in down)
    line = await access_log_line(caplog, request_id_in(message))
    assert all(url in line for url in down)
    assert "sk-down" not in line


async def test_a_backend_recovers_after_its_cooldown_through_a_probe(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    flaky = failing("flaky", RandomFault.STATUS_500)
    quick = attrs.evolve(settings, cooldown_after=1, cooldown=0.3, retries=0)
    gateway = await start(nursery, quick, {"openai": [flaky]})
    url = f"{gateway.base_url}/chat/completions"

    assert (await client.post(url, json=chat())).status_code == 500
    resting = await client.post(url, json=chat())
    assert resting.status_code == 503
    assert "resting" in resting.json()["error"]["message"]

    flaky.failure_rate = 0.0
    await trio.sleep(0.35)
    assert (await client.post(url, json=chat())).status_code == 200
    assert (await client.post(url, json=chat())).status_code == 200


async def test_round_robin_follows_weights(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    heavy, light = MockUpstream("heavy"), MockUpstream("light")
    gateway = await start(
        nursery,
        attrs.evolve(settings, balance="round_robin"),
        {"openai": [heavy, light]},
        weights={"openai": [3, 1]},
    )
    for _ in range(8):
        await client.post(f"{gateway.base_url}/chat/completions", json=chat())
    assert (len(heavy.requests), len(light.requests)) == (6, 2)


async def test_least_in_flight_spreads_concurrent_requests_by_weight(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    heavy, light = MockUpstream("heavy"), MockUpstream("light")
    gateway = await start(nursery, settings, {"openai": [heavy, light]}, weights={"openai": [3, 1]})
    body = chat(mock={"headers_delay": 0.3})
    async with trio.open_nursery() as burst:
        for _ in range(8):
            burst.start_soon(
                partial(client.post, f"{gateway.base_url}/chat/completions", json=body)
            )
    assert (len(heavy.requests), len(light.requests)) == (6, 2)


async def test_a_failing_provider_falls_back_to_the_next_one(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    primary = failing("primary", RandomFault.STATUS_503)
    backup = MockUpstream("backup")
    gateway = await start(
        nursery,
        attrs.evolve(settings, retries=0),
        {"primary": [primary], "backup": [backup]},
        fallbacks={"gpt-4.1": ["backup"]},
    )
    response = await client.post(f"{gateway.base_url}/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.headers["x-mock-upstream"] == "backup"
    assert backup.requests[0].headers["authorization"] == "Bearer sk-backup-provider-credential"
    assert primary.injected["status_503"] == 1


async def test_each_request_logs_one_line_with_its_request_id(
    nursery: trio.Nursery,
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    broken, healthy = failing("broken", RandomFault.STATUS_500), MockUpstream("healthy")
    gateway = await start(
        nursery, attrs.evolve(settings, balance="round_robin"), {"openai": [broken, healthy]}
    )
    response = await client.post(f"{gateway.base_url}/chat/completions", json=chat())
    request_id = response.headers["x-request-id"]

    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sopy.access"]

    # The line is written once the response is out, so it may trail the client by a moment.
    await eventually(lambda: len(access_lines()) == 1)
    lines = access_lines()
    line = lines[0]
    assert line.startswith(f"request {request_id} key=")
    for part in ("model=gpt-4.1", "provider=openai", "status=200", "attempts=2", "upstream_ms="):
        assert part in line
    assert USER_KEY not in line
    assert "provider-credential" not in line


async def test_a_backend_removed_and_added_again_starts_afresh(
    nursery: trio.Nursery, settings: Settings, client: httpx.AsyncClient
) -> None:
    broken, steady = failing("broken", RandomFault.STATUS_500), MockUpstream("steady")
    resting_long = attrs.evolve(settings, balance="round_robin", cooldown_after=1, cooldown=30)
    gateway = await start(nursery, resting_long, {"openai": [broken, steady]})
    url = f"{gateway.base_url}/chat/completions"
    assert (await client.post(url, json=chat())).status_code == 200
    assert broken.injected["status_500"] == 1, "round robin began with `broken`, now resting"

    broken_url = broken.requests[0].headers["host"]
    async with await gateway.sopy.admin() as admin:
        await admin.ok("remove_backend", provider="openai", url=f"http://{broken_url}")
        broken.failure_rate = 0.0
        await admin.ok("add_backend", provider="openai", url=f"http://{broken_url}")
    for _ in range(4):
        assert (await client.post(url, json=chat())).status_code == 200

    assert len(broken.requests) == 3, "the mended backend took its turns at once"
