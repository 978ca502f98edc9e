"""Every OpenAI route besides chat, as the official OpenAI SDK uses it, through a live Sopy to the
mock upstream: routed by the body's model (or the form's `model` field) and passed through."""

import logging
import socket
from collections.abc import AsyncIterator

import attrs
import httpx
import openai
import pytest
import trio

from sopy.settings import Settings
from sopy.testing.mock.openai_routes import embedding_vector, speech_parts
from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import (
    USER_KEY,
    Gateway,
    access_log_line,
    start_gateway,
    start_gateway_with,
)

AUDIO = b"RIFF" + bytes(range(256)) * 40


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, retries=0)


@pytest.fixture
async def gateway(sopy: SopyUnderTest, nursery: trio.Nursery) -> Gateway:
    return await start_gateway(
        sopy,
        nursery,
        {
            "gpt-4.1": "openai",
            "text-embedding-3-small": "openai",
            "omni-moderation-latest": "openai",
            "gpt-image-1": "openai",
            "whisper-1": "openai",
            "tts-1": "openai",
            "org/model:v1": "openai",
        },
    )


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=USER_KEY, max_retries=0
    ) as client:
        yield client


def _upstream(gateway: Gateway) -> MockUpstream:
    return gateway.upstreams("openai")[0]


async def test_embeddings_pass_through(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    answer = await client.embeddings.create(
        model="text-embedding-3-small", input=["one", "two"], encoding_format="float"
    )
    assert [item.embedding for item in answer.data] == [
        pytest.approx(embedding_vector("text-embedding-3-small", text, 16))
        for text in ("one", "two")
    ]
    received = _upstream(gateway).requests[-1]
    assert received.path == "/v1/embeddings"
    assert received.headers["authorization"] == "Bearer sk-openai-provider-credential"


async def test_legacy_completion_as_json_and_as_stream(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model="gpt-4.1", prompt="say hi")
    assert whole.choices[0].text.strip() == "Hello from openai-0: you said say hi"
    stream = await client.completions.create(model="gpt-4.1", prompt="say hi", stream=True)
    pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert len(pieces) > 2
    assert "".join(pieces).strip() == whole.choices[0].text.strip()


async def test_moderation_passes_through(client: openai.AsyncOpenAI) -> None:
    answer = await client.moderations.create(
        model="omni-moderation-latest", input=["calm words", "violence"]
    )
    assert [result.flagged for result in answer.results] == [False, True]


async def test_image_generation_and_edit(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    generated = await client.images.generate(model="gpt-image-1", prompt="a cat")
    assert generated.data is not None
    assert generated.data[0].revised_prompt == "gpt-image-1: a cat"
    edited = await client.images.edit(
        model="gpt-image-1", image=("cat.png", AUDIO, "image/png"), prompt="with a hat"
    )
    assert edited.data is not None
    assert edited.data[0].revised_prompt == f"gpt-image-1 edited {len(AUDIO)} bytes: with a hat"
    assert _upstream(gateway).requests[-1].form()["image"].value == AUDIO


async def test_transcription_of_an_uploaded_file(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    heard = await client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", AUDIO, "audio/wav")
    )
    assert heard.text == f"openai-0 heard {len(AUDIO)} bytes with whisper-1"
    # The SDK deprecates translations; clients still send them.
    async with gateway.client(gateway.base_url) as raw:
        translated = await raw.post(
            "/audio/translations",
            data={"model": "whisper-1"},
            files={"file": ("speech.wav", AUDIO, "audio/wav")},
        )
    assert translated.json() == {"text": f"openai-0 translated {len(AUDIO)} bytes with whisper-1"}
    assert _upstream(gateway).requests[-1].form()["file"].value == AUDIO


async def test_speech_bytes_arrive_as_the_provider_sent_them(client: openai.AsyncOpenAI) -> None:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        audio = b"".join([piece async for piece in response.iter_bytes()])
    assert audio == b"".join(speech_parts("openai-0", "tts-1", "hello"))


async def test_response_created_as_json(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    response = await client.responses.create(model="gpt-4.1", input="hello there")
    assert response.output_text == "Hello from openai-0: you said hello there"
    assert _upstream(gateway).requests[-1].path == "/v1/responses"


async def test_response_streamed_event_by_event(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model="gpt-4.1", input="stream it") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 2
    assert "".join(deltas) == final.output_text == "Hello from openai-0: you said stream it"


async def test_response_input_tokens_and_compaction(client: openai.AsyncOpenAI) -> None:
    counted = await client.responses.input_tokens.count(model="gpt-4.1", input="one two three")
    assert counted.input_tokens == 3
    compacted = await client.responses.compact(model="gpt-4.1", input="one two three")
    assert compacted.output[-1].type == "compaction"


async def test_models_retrieve_a_mapped_model_and_404_for_another(
    client: openai.AsyncOpenAI,
) -> None:
    model = await client.models.retrieve("org/model:v1")
    assert (model.id, model.object, model.owned_by) == ("org/model:v1", "model", "openai")
    listed = [m async for m in client.models.list()]
    assert model in listed
    with pytest.raises(openai.NotFoundError) as refused:
        await client.models.retrieve("gpt-unknown")
    assert refused.value.code == "model_not_found"
    assert refused.value.param == "model"


async def test_models_retrieve_needs_a_key(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as anonymous:
        response = await anonymous.get("/models/gpt-4.1")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": "x"}, 400, "invalid_request"),
        ({"model": 42, "input": "x"}, 400, "invalid_request"),
        ({"model": ["gpt-4.1"], "input": "x"}, 400, "invalid_request"),
        ({"model": "gpt-unknown", "input": "x"}, 404, "model_not_found"),
    ],
)
async def test_model_missing_not_a_string_or_unmapped_on_embeddings(
    gateway: Gateway, body: dict[str, object], status: int, code: str
) -> None:
    async with gateway.client(gateway.base_url) as client:
        response = await client.post("/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "model"
    assert error["code"] == code
    assert _upstream(gateway).requests == []


async def test_multipart_model_unmapped_or_missing(gateway: Gateway) -> None:
    files = {"file": ("speech.wav", AUDIO, "audio/wav")}
    async with gateway.client(gateway.base_url) as client:
        unmapped = await client.post(
            "/audio/transcriptions", data={"model": "whisper-9"}, files=files
        )
        missing = await client.post("/audio/transcriptions", data={"language": "en"}, files=files)
    assert unmapped.status_code == 404
    assert unmapped.json()["error"]["code"] == "model_not_found"
    assert "whisper-9" in unmapped.json()["error"]["message"]
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    assert _upstream(gateway).requests == []


async def test_a_body_neither_json_nor_a_form_is_refused(gateway: Gateway) -> None:
    async with gateway.client(gateway.base_url) as client:
        response = await client.post(
            "/embeddings", content=b"model=gpt-4.1", headers={"content-type": "text/plain"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def _closed_port_url() -> str:
    """A backend URL where nothing listens: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("route", ["embeddings", "audio/transcriptions"])
async def test_a_non_chat_route_falls_back_to_the_next_provider(
    sopy: SopyUnderTest, nursery: trio.Nursery, route: str
) -> None:
    # Given a model whose provider cannot be reached, with a fallback provider
    gateway = await start_gateway_with(sopy, nursery, {"spare": [MockUpstream("spare-0")]}, {})
    await gateway.admin_ok("add_backend", provider="down", url=_closed_port_url())
    await gateway.admin_ok("add_admin_auth", name="down", credentials="sk-down")
    await gateway.admin_ok(
        "add_model_mapping", model_name="whisper-1", provider="down", fallbacks=["spare"]
    )
    # When the route is called
    async with gateway.client(gateway.base_url) as client:
        if route == "embeddings":
            response = await client.post("/embeddings", json={"model": "whisper-1", "input": "x"})
        else:
            response = await client.post(
                f"/{route}",
                data={"model": "whisper-1"},
                files={"file": ("a.wav", AUDIO, "audio/wav")},
            )
    # Then the fallback answers, having received the body as the client sent it
    assert response.status_code == 200, response.text
    assert response.headers["x-mock-upstream"] == "spare-0"
    [received] = gateway.upstreams("spare")[0].requests
    assert received.path == f"/v1/{route}"
    assert received.headers["authorization"] == "Bearer sk-spare-provider-credential"


async def test_account_version_and_idempotency_headers_reach_the_provider(
    gateway: Gateway,
) -> None:
    # Given a client that names its organization, project, API betas and an idempotency key
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url,
        api_key=USER_KEY,
        organization="org-abc",
        project="proj_123",
        max_retries=0,
    ) as client:
        # When it makes a request
        await client.embeddings.create(
            model="text-embedding-3-small",
            input="x",
            extra_headers={
                "OpenAI-Beta": "assistants=v2",
                "anthropic-beta": "tools-2024-04-04",
                "anthropic-version": "2023-06-01",
                "Idempotency-Key": "retry-me-once",
            },
        )
    # Then the provider sees each of them, and its own credential instead of the user key
    headers = _upstream(gateway).requests[-1].headers
    assert headers["openai-organization"] == "org-abc"
    assert headers["openai-project"] == "proj_123"
    assert headers["openai-beta"] == "assistants=v2"
    assert headers["anthropic-beta"] == "tools-2024-04-04"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["idempotency-key"] == "retry-me-once"
    assert headers["authorization"] == "Bearer sk-openai-provider-credential"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_backend_request_id_is_relayed_and_logged_beside_sopys(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger="sopy.access")
    async with gateway.client(gateway.base_url) as client:
        response = await client.post(
            "/completions", json={"model": "gpt-4.1", "prompt": "hi", "stream": stream}
        )
    assert response.status_code == 200
    sopy_id = response.headers["x-request-id"]
    upstream_id = response.headers["x-upstream-request-id"]
    assert upstream_id and upstream_id != sopy_id
    assert response.headers.get_list("x-request-id") == [sopy_id]
    line = await access_log_line(caplog, sopy_id)
    assert f" upstream_request_id={upstream_id} " in line + " "


async def test_speech_reaches_the_client_while_the_provider_still_speaks(
    gateway: Gateway,
) -> None:
    # Given a provider that sends its audio in parts, a while apart
    body = {"model": "tts-1", "input": "hello", "voice": "alloy", "mock": {"chunk_delay": 0.3}}
    async with (
        gateway.client(gateway.base_url) as client,
        client.stream("POST", "/audio/speech", json=body) as response,
    ):
        parts = response.aiter_raw()
        # When the first bytes reach the client
        first = await anext(parts)
        # Then the provider has not finished yet, and the rest follows unchanged
        assert _upstream(gateway).in_flight == 1
        rest = b"".join([part async for part in parts])
    assert first + rest == b"".join(speech_parts("openai-0", "tts-1", "hello"))


async def test_speech_that_breaks_off_reaches_the_client_as_broken(gateway: Gateway) -> None:
    body = {"model": "tts-1", "input": "hello", "voice": "alloy", "mock": {"reset_after": 2}}
    async with gateway.client(gateway.base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/audio/speech", json=body)
