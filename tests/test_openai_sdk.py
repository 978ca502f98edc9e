"""The public API as the official OpenAI SDK sees it, sync and async, through the real gateway."""

import socket
from collections.abc import AsyncIterator

import attrs
import openai
import pytest
import trio

from sopy.settings import Settings
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, start_gateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Relay upstream answers as they are: retries have their own tests."""
    return attrs.evolve(settings, retries=0)


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        yield client


def _sync_client(gateway: Gateway, api_key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


async def test_sync_client_gets_a_completion(gateway: Gateway) -> None:
    def complete() -> str | None:
        with _sync_client(gateway) as client:
            completion = client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "ping"}]
            )
        assert completion.model == "gpt-4.1"
        assert completion.usage is not None
        return completion.choices[0].message.content

    content = await trio.to_thread.run_sync(complete)
    assert content == "Hello from openai-0: you said ping"


async def test_async_client_gets_a_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content == "Hello from openai-0: you said hello there"
    assert completion.choices[0].finish_reason == "stop"


async def test_streamed_completion_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces).strip() == "Hello from openai-0: you said stream please"
    assert len(pieces) > 3
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_sync_client_streams(gateway: Gateway) -> None:
    def stream_text() -> str:
        with _sync_client(gateway) as client:
            stream = client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "x"}], stream=True
            )
            return "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )

    assert (await trio.to_thread.run_sync(stream_text)).strip() == "Hello from openai-0: you said x"


async def test_models_list_shows_mapped_models_owned_by_provider(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    await gateway.admin_ok("add_model_mapping", model_name="claude-3", provider="anthropic")
    models = [model async for model in client.models.list()]
    assert sorted((m.id, m.owned_by) for m in models) == [
        ("claude-3", "anthropic"),
        ("gpt-4.1", "openai"),
    ]
    assert all(m.object == "model" and m.created > 0 for m in models)


async def test_unknown_key_gets_401(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="sk-not-a-real-key", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as raised:
            await stranger.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]
            )
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


async def test_unknown_model_gets_404_model_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
    assert "add_model_mapping" in raised.value.message


async def test_bad_body_gets_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"stream": "yes please"},
        )
    assert raised.value.param == "stream"


async def test_upstream_errors_are_relayed_in_openai_shape(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"mock": {"status": 429, "retry_after": 3}},
        )
    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.code == "rate_limit_exceeded"


async def test_an_unreachable_provider_gives_the_sdk_its_request_id_and_no_backend_url(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    await gateway.admin_ok("add_backend", provider="dead", url=f"http://{dead}")
    await gateway.admin_ok("add_model_mapping", model_name="dead-model", provider="dead")
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(
            model="dead-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_error"
    assert raised.value.request_id is not None
    assert raised.value.request_id in raised.value.message
    assert dead not in raised.value.message
