"""Specs for the mock upstream's OpenAI routes besides chat and Responses: the official `openai`
SDK, pointed straight at the mock, parses every answer with its own typed models."""

import base64
import struct
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import trio

from sopy.testing.mock.openai_routes import embedding_vector, speech_parts
from sopy.testing.mock_upstream import MockUpstream

NAME = "alpha"


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream(NAME)


@pytest.fixture
async def base_url(mock: MockUpstream, nursery: trio.Nursery) -> str:
    origin: str = await nursery.start(mock.serve)
    return f"{origin}/v1"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
        yield client


async def test_completions_echo_the_model_and_prompt(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="davinci-test", prompt="say this")

    assert completion.object == "text_completion"
    assert completion.model == "davinci-test"
    assert completion.choices[0].text == f"Hello from {NAME}: you said say this"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2


async def test_streamed_completions_end_with_stop_and_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model="davinci-test",
        prompt="say this",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    texts = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert texts == f"Hello from {NAME}: you said say this"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2 + 7


async def test_streamed_completions_end_with_done(base_url: str) -> None:
    body = {"model": "davinci-test", "prompt": "hi", "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base_url}/completions", json=body)

    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.endswith("data: [DONE]\n\n")


async def test_embeddings_are_deterministic_in_base64_as_the_sdk_asks(
    client: openai.AsyncOpenAI, mock: MockUpstream
) -> None:
    result = await client.embeddings.create(model="embed-test", input=["one", "two"])

    assert mock.requests[-1].json().get("encoding_format") == "base64"
    assert result.model == "embed-test"
    assert [item.index for item in result.data] == [0, 1]
    first = result.data[0].embedding
    assert first == pytest.approx(embedding_vector("embed-test", "one", 16))
    assert sum(value * value for value in first) == pytest.approx(1.0, abs=1e-5)
    assert result.data[1].embedding != first
    assert result.usage.prompt_tokens == 2


async def test_embeddings_in_float_with_dimensions(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(
        model="embed-test", input="same text", dimensions=5, encoding_format="float"
    )
    again = await client.embeddings.create(
        model="embed-test", input="same text", dimensions=5, encoding_format="float"
    )

    assert result.data[0].embedding == embedding_vector("embed-test", "same text", 5)
    assert again.data[0].embedding == result.data[0].embedding


async def test_base64_embeddings_carry_the_float_vector(base_url: str) -> None:
    body = {"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 3}
    async with httpx.AsyncClient() as http:
        data = (await http.post(f"{base_url}/embeddings", json=body)).json()["data"][0]

    packed = base64.b64decode(data["embedding"])
    assert list(struct.unpack("<3f", packed)) == embedding_vector("m", "x", 3)


async def test_moderations_flag_violence_only(client: openai.AsyncOpenAI) -> None:
    result = await client.moderations.create(
        model="omni-test", input=["a calm day", "violence everywhere"]
    )

    calm, violent = result.results
    assert result.model == "omni-test"
    assert not calm.flagged
    assert violent.flagged
    assert violent.categories.violence
    assert not violent.categories.hate


async def test_image_generation_is_b64_json_echoing_model_and_prompt(
    client: openai.AsyncOpenAI,
) -> None:
    result = await client.images.generate(model="image-test", prompt="a cat", n=2)

    assert result.data is not None
    assert len(result.data) == 2
    assert result.data[0].revised_prompt == "image-test: a cat"
    assert base64.b64decode(result.data[0].b64_json or "").startswith(b"\x89PNG")


async def test_image_edit_echoes_the_model_field_and_the_file_size(
    client: openai.AsyncOpenAI, mock: MockUpstream
) -> None:
    # Every byte value, CR LF pairs and a fake boundary among them: the file must arrive whole.
    content = b"\x89PNG" + bytes(range(256)) + b"\r\n--boundary\r\n" * 3 + b"\0" * 4
    picture = ("cat.png", content, "image/png")

    result = await client.images.edit(model="image-test", image=picture, prompt="add a hat")

    assert result.data is not None
    assert result.data[0].revised_prompt == f"image-test edited {len(content)} bytes: add a hat"
    form = mock.requests[-1].form()
    assert form["model"].text == "image-test"
    assert form["image"].filename == "cat.png"
    assert form["image"].value == content


async def test_transcription_echoes_model_and_byte_count(client: openai.AsyncOpenAI) -> None:
    result = await client.audio.transcriptions.create(
        model="whisper-test", file=("talk.mp3", b"\1" * 1234, "audio/mpeg")
    )

    assert result.text == f"{NAME} heard 1234 bytes with whisper-test"


async def test_transcription_in_text_format(client: openai.AsyncOpenAI) -> None:
    result = await client.audio.transcriptions.create(
        model="whisper-test", file=("talk.mp3", b"\1" * 10, "audio/mpeg"), response_format="text"
    )

    assert result.strip() == f"{NAME} heard 10 bytes with whisper-test"


# The SDK marks translations deprecated; providers still serve the route, so the mock does.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_translation_echoes_model_and_byte_count(client: openai.AsyncOpenAI) -> None:
    result = await client.audio.translations.create(
        model="whisper-test", file=("talk.mp3", b"\1" * 10, "audio/mpeg")
    )

    assert result.text == f"{NAME} translated 10 bytes with whisper-test"


async def test_a_transcription_without_a_file_is_a_400(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/audio/transcriptions", files={"model": (None, "whisper-test")}
        )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


async def test_speech_is_audio_streamed_in_several_parts(base_url: str) -> None:
    body = {"model": "tts-test", "input": "hello", "voice": "alloy"}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{base_url}/audio/speech", json=body) as response,
    ):
        parts = [part async for part in response.aiter_raw()]

    assert response.headers["content-type"] == "audio/mpeg"
    assert b"".join(parts) == b"".join(speech_parts(NAME, "tts-test", "hello"))
    assert len(parts) > 1


async def test_speech_through_the_sdk(client: openai.AsyncOpenAI) -> None:
    audio = await client.audio.speech.create(model="tts-test", input="hello", voice="alloy")

    assert audio.content == b"".join(speech_parts(NAME, "tts-test", "hello"))


async def test_a_missing_model_is_a_400_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/embeddings", body={"input": "x"}, cast_to=httpx.Response)

    assert refused.value.param == "model"


async def test_the_mock_object_fails_any_json_route(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match=f"mock upstream {NAME} injected"):
        await client.embeddings.create(
            model="embed-test", input="x", extra_body={"mock": {"status": 503}}
        )


async def test_requests_record_path_headers_and_raw_body(
    client: openai.AsyncOpenAI, mock: MockUpstream
) -> None:
    await client.moderations.create(model="omni-test", input="hello")

    request = mock.requests[-1]
    assert request.path == "/v1/moderations"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {"model": "omni-test", "input": "hello"}
