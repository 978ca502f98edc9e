"""A provider's rate limit stays a rate limit: a 429 is no health failure, the client gets it
(with the backend's `Retry-After`) when no other backend can take the request, a short
`Retry-After` is waited out inside the gateway, and retries of one request count once toward a
cooldown. Every refusal for resting backends says, in `Retry-After`, when to come back."""

import email.utils
import time
from typing import Any

import attrs
import httpx
import openai
import trio

from sopy.settings import Settings
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import AUTH, USER_KEY, Gateway, chat, start_gateway_with


async def start(
    nursery: trio.Nursery, settings: Settings, upstreams: list[MockUpstream]
) -> Gateway:
    sopy = SopyUnderTest(nursery, settings)
    await sopy.start()
    return await start_gateway_with(sopy, nursery, {"openai": upstreams}, {"gpt-4.1": "openai"})


async def post(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        with trio.fail_after(30):
            return await client.post(f"{gateway.base_url}/chat/completions", json=body)


def rate_limited(retry_after: float | str | None = None) -> dict[str, Any]:
    fault: dict[str, Any] = {"status": 429}
    if retry_after is not None:
        fault["retry_after"] = retry_after
    return chat(mock=fault)


async def test_the_only_backends_429_reaches_the_client_at_once_with_its_retry_after(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, settings, [only])

    began = trio.current_time()
    response = await post(gateway, rate_limited(30))

    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert trio.current_time() - began < 1.0
    assert len(only.requests) == 1, "not retried on the backend that asked to wait 30 s"


async def test_while_the_backend_waits_out_its_rate_limit_clients_get_429_not_503(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, settings, [only])
    await post(gateway, rate_limited(30))

    for model_request in (chat(), chat(stream=True)):
        response = await post(gateway, model_request)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert "rate limited" in response.json()["error"]["message"]
        assert 29 <= int(response.headers["retry-after"]) <= 30
    assert len(only.requests) == 1, "the gateway answered for the resting backend"


async def test_an_http_date_retry_after_holds_the_backend_until_then(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, settings, [only])
    in_20_s = email.utils.formatdate(time.time() + 20, usegmt=True)

    await post(gateway, rate_limited(in_20_s))
    response = await post(gateway, chat())

    assert response.status_code == 429
    assert 18 <= int(response.headers["retry-after"]) <= 21


async def test_429s_do_not_put_a_backend_in_cooldown(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, attrs.evolve(settings, cooldown_after=2), [only])

    for _ in range(4):
        response = await post(gateway, rate_limited())
        assert response.status_code == 429
    response = await post(gateway, chat())

    assert response.status_code == 200
    assert len(only.requests) == 5, "a 429 without Retry-After is not retried on its backend"


async def test_a_one_second_retry_after_is_waited_out_once(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, attrs.evolve(settings, retries=5), [only])

    began = trio.current_time()
    response = await post(gateway, rate_limited(1))
    elapsed = trio.current_time() - began

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    # One wait of 1 s fits the gateway's 1 s budget; a second would not, whatever --retries.
    assert len(only.requests) == 2
    assert 1.0 <= elapsed < 2.5


async def test_a_longer_retry_after_is_passed_on_without_waiting(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, attrs.evolve(settings, retries=5), [only])

    began = trio.current_time()
    response = await post(gateway, rate_limited(2))

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert len(only.requests) == 1
    assert trio.current_time() - began < 1.0


async def test_retries_of_one_request_count_once_toward_cooldown(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, attrs.evolve(settings, cooldown_after=2, cooldown=30), [only])

    failed = await post(gateway, chat(mock={"status": 500}))
    assert failed.status_code == 500
    assert len(only.requests) == 3, "tried once and retried twice"
    assert (await post(gateway, chat())).status_code == 200

    for _ in range(2):
        assert (await post(gateway, chat(mock={"status": 500}))).status_code == 500
    resting = await post(gateway, chat())

    assert resting.status_code == 503
    assert resting.json()["error"]["code"] == "no_backend"
    assert 29 <= int(resting.headers["retry-after"]) <= 30


async def test_the_openai_sdk_with_default_retries_raises_rate_limit_error_quickly(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, settings, [only])

    began = trio.current_time()
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=USER_KEY) as client:
        try:
            await client.chat.completions.create(
                model="gpt-4.1",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"mock": {"status": 429}},
            )
        except openai.RateLimitError as error:
            assert error.code == "rate_limit_exceeded"
        else:
            raise AssertionError("the 429 did not surface as openai.RateLimitError")
    elapsed = trio.current_time() - began

    # The SDK's own two retries back off ~0.5 s and ~1 s; the gateway adds no wait of its own.
    assert elapsed < 3.0, elapsed
    assert len(only.requests) == 3


async def test_the_openai_sdk_sees_the_gateways_own_429_as_a_rate_limit_error(
    nursery: trio.Nursery, settings: Settings
) -> None:
    only = MockUpstream("only")
    gateway = await start(nursery, settings, [only])
    await post(gateway, rate_limited(60))

    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        try:
            await client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.RateLimitError as error:
            assert int(error.response.headers["retry-after"]) >= 59
        else:
            raise AssertionError("no openai.RateLimitError while the backend rests")
