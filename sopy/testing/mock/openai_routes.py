"""OpenAI's one-shot routes besides chat: legacy completions, embeddings, moderations, images
and audio, answered as the real API shapes them.

`server.MockUpstream` dispatches here by path. Everything is deterministic: embeddings are
drawn from a hash of the model and the text (the same input gives the same vector), images are a
fixed PNG whose `revised_prompt` echoes the model and the input, transcriptions echo the model
and the file's byte count, speech is audio bytes naming the model and the input, streamed in
several parts.
"""

import base64
import hashlib
import struct
from typing import Any

import orjson

from sopy.testing.mock.exchange import Exchange, send_parts
from sopy.testing.mock.http import (
    FormPart,
    RouteError,
    json_object,
    required_string,
)
from sopy.testing.mock.text import CREATED, pieces_of, reply_text, token_count

DEFAULT_EMBEDDING_DIMENSIONS = 16
SPEECH_PARTS = 4
# The smallest valid PNG: one transparent pixel.
PNG_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# The word that makes a moderation flag its input, under "violence".
FLAGGED_WORD = "violence"
SPEECH_CONTENT_TYPES = {
    "mp3": b"audio/mpeg",
    "opus": b"audio/opus",
    "aac": b"audio/aac",
    "flac": b"audio/flac",
    "wav": b"audio/wav",
    "pcm": b"audio/pcm",
}


async def complete_text(exchange: Exchange) -> None:
    """POST /v1/completions: the legacy text completion, JSON or SSE ending in `[DONE]`."""
    payload = json_object(exchange.request.body)
    model = required_string(payload, "model")
    prompt = _prompt_text(payload.get("prompt"))
    pieces = pieces_of(reply_text(exchange.upstream_name, prompt))
    prompt_tokens = token_count(prompt)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces),
    }
    completion_id = f"cmpl-{exchange.upstream_name}-{exchange.number}"
    if payload.get("stream") is True:
        chunks = [_text_chunk(completion_id, model, piece, None) for piece in pieces]
        chunks.append(_text_chunk(completion_id, model, "", "stop"))
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            chunks.append({**_text_chunk(completion_id, model, "", None), "choices": []})
            chunks[-1]["usage"] = usage
        events = [_data_event(chunk) for chunk in chunks] + [b"data: [DONE]\n\n"]
        await send_parts(exchange, events)
        return
    completion = _text_chunk(completion_id, model, "".join(pieces), "stop")
    await exchange.response.json(200, {**completion, "usage": usage})


def _prompt_text(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return " ".join(prompt)
    if isinstance(prompt, list):  # token ids: echo how many
        return f"{len(prompt)} tokens"
    raise RouteError(400, "'prompt' must be a string or a list.", param="prompt")


def _text_chunk(completion_id: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def _data_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def embed(exchange: Exchange) -> None:
    """POST /v1/embeddings: one deterministic unit vector per input, float or base64."""
    payload = json_object(exchange.request.body)
    model = required_string(payload, "model")
    inputs = _embedding_inputs(payload.get("input"))
    dimensions = payload.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise RouteError(400, "'dimensions' must be a positive integer.", param="dimensions")
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RouteError(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    data = []
    for index, text in enumerate(inputs):
        vector = embedding_vector(model, text, dimensions)
        encoded: object = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(token_count(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    await exchange.response.json(
        200, {"object": "list", "data": data, "model": model, "usage": usage}
    )


def embedding_vector(model: str, text: str, dimensions: int) -> list[float]:
    """The unit vector the mock gives `text` under `model`: a test can compute it too."""
    digest = b""
    counter = 0
    while len(digest) < 4 * dimensions:
        digest += hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        counter += 1
    raw = [
        value / 2**31 - 1.0 for value in struct.unpack(f"<{dimensions}I", digest[: 4 * dimensions])
    ]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    # Rounded through float32, so that float and base64 answers carry the same numbers.
    packed = struct.pack(f"<{dimensions}f", *(value / norm for value in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _embedding_inputs(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(item, str) for item in raw):
            return list(raw)
        if all(isinstance(item, int) for item in raw):
            return [" ".join(map(str, raw))]
        if all(isinstance(item, list) for item in raw):
            return [" ".join(map(str, item)) for item in raw]
    raise RouteError(
        400, "'input' must be a string, a list of strings or of token ids.", param="input"
    )


async def moderate(exchange: Exchange) -> None:
    """POST /v1/moderations: flags an input that contains the word `violence`."""
    payload = json_object(exchange.request.body)
    model = payload.get("model", "omni-moderation-latest")
    raw = payload.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise RouteError(400, "'input' must be a string or a list.", param="input")
    results = [_moderation(text if isinstance(text, str) else str(text)) for text in texts]
    moderation_id = f"modr-{exchange.upstream_name}-{exchange.number}"
    await exchange.response.json(200, {"id": moderation_id, "model": model, "results": results})


def _moderation(text: str) -> dict[str, Any]:
    flagged = FLAGGED_WORD in text.lower().split()
    categories = {name: flagged and name == "violence" for name in MODERATION_CATEGORIES}
    scores = {name: 0.99 if categories[name] else 0.01 for name in MODERATION_CATEGORIES}
    applied = {name: ["text"] for name in MODERATION_CATEGORIES}
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


async def generate_images(exchange: Exchange) -> None:
    """POST /v1/images/generations: `n` PNGs as b64_json, the prompt echoed with the model."""
    payload = json_object(exchange.request.body)
    model = payload.get("model", "dall-e-2")
    prompt = required_string(payload, "prompt")
    await exchange.response.json(200, _images(payload.get("n", 1), f"{model}: {prompt}"))


async def edit_images(exchange: Exchange) -> None:
    """POST /v1/images/edits (multipart): echoes the model field and the image's byte count."""
    form = exchange.request.form()
    image = form.get("image") or form.get("image[]")
    if image is None or image.filename is None:
        raise RouteError(400, "'image' must be a file.", param="image")
    model = _form_text(form, "model", "dall-e-2")
    prompt = _form_text(form, "prompt", "")
    count = int(_form_text(form, "n", "1"))
    echo = f"{model} edited {len(image.value)} bytes: {prompt}"
    await exchange.response.json(200, _images(count, echo))


def _images(count: object, revised_prompt: str) -> dict[str, Any]:
    if not isinstance(count, int) or not 1 <= count <= 10:
        raise RouteError(400, "'n' must be an integer from 1 to 10.", param="n")
    picture = base64.b64encode(PNG_PIXEL).decode()
    data = [{"b64_json": picture, "revised_prompt": revised_prompt} for _ in range(count)]
    return {"created": CREATED, "data": data}


async def transcribe(exchange: Exchange) -> None:
    """POST /v1/audio/transcriptions and /translations (multipart): `json` or `text` format."""
    form = exchange.request.form()
    audio = form.get("file")
    if audio is None or audio.filename is None:
        raise RouteError(400, "'file' must be a file.", param="file")
    model = _form_text(form, "model", None)
    verb = "translated" if exchange.request.path.endswith("translations") else "heard"
    text = f"{exchange.upstream_name} {verb} {len(audio.value)} bytes with {model}"
    response_format = _form_text(form, "response_format", "json")
    if response_format == "text":
        await exchange.response.whole(200, b"text/plain; charset=utf-8", text.encode() + b"\n")
    elif response_format == "json":
        await exchange.response.json(200, {"text": text})
    else:
        raise RouteError(
            400, "The mock serves response_format 'json' or 'text'.", param="response_format"
        )


def _form_text(form: dict[str, FormPart], name: str, default: str | None) -> str:
    part = form.get(name)
    if part is not None:
        return part.text
    if default is None:
        raise RouteError(400, f"'{name}' is a required field.", param=name)
    return default


async def speak(exchange: Exchange) -> None:
    """POST /v1/audio/speech: audio bytes naming the model and input, in several body parts."""
    payload = json_object(exchange.request.body)
    model = required_string(payload, "model")
    spoken = required_string(payload, "input")
    audio_format = payload.get("response_format", "mp3")
    content_type = SPEECH_CONTENT_TYPES.get(audio_format) if isinstance(audio_format, str) else None
    if content_type is None:
        raise RouteError(400, f"Unknown response_format {audio_format!r}.", param="response_format")
    await send_parts(exchange, speech_parts(exchange.upstream_name, model, spoken), content_type)


def speech_parts(upstream_name: str, model: str, spoken: str) -> list[bytes]:
    """The body parts of a speech answer, in order: join them for the whole audio."""
    return [f"{upstream_name} {model} part {i}: {spoken}\n".encode() for i in range(SPEECH_PARTS)]
