"""A deterministic OpenAI-compatible upstream provider, with faults injected per request.

This module owns `MockUpstream`, a small HTTP server (hypercorn serving a plain ASGI app on trio)
that answers `GET /v1/models` and `POST /v1/chat/completions`, streaming or not, and records every
request it receives. Sopy's tests, demos and benchmarks put it behind the gateway as the provider;
`sopy mock-upstream` runs it standalone through `run_mock_upstream`.

Faults are chosen by the caller through an optional `"mock"` object in the chat request body, which
the gateway forwards unchanged: an error status (with `retry_after`, a number or any header text),
delays before the headers or between streamed events, longer streams (`chunks`), a connection
dropped mid-stream (`reset_after`), and hostile sizes: a body of `body_bytes` (announced by
Content-Length unless `length_unknown`) or a stream whose one line never ends
(`endless_line_bytes`), both sent in pieces `chunk_delay` apart without ever being held in memory.
`disconnects`, `in_flight` and `padding_sent` let tests check that the gateway let go of an
upstream request once its own client went away or it had read enough.

For chaos tests and demos, `failure_rate` turns on a server-wide random failure mode: each chat
completion that asks for no faults itself fails, with that probability, in one of the
`RandomFault` ways, drawn from a generator seeded by `seed` so that a run can be replayed.
`injected` counts what was drawn. `GET /v1/models` never fails.
"""

import enum
import random
import signal
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import hypercorn.trio
import orjson
import trio
from attrs import validators
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

MODEL_ID = "mock-model"
CREATED = 1700000000

_Headers = Sequence[tuple[bytes, bytes]]
_PADDING = b"x" * 65536


class RandomFault(enum.StrEnum):
    """The ways the random failure mode makes a chat completion fail, named as in `injected`.

    `status_500` and `status_503` are OpenAI-shaped server errors and `status_429` a rate limit
    with `retry-after: 0`. `reset` sends the headers of a 200 (and, when streaming, the first
    event) and then closes the connection mid-body, which httpx reports as `RemoteProtocolError`
    ("incomplete chunked read"). `hang` holds back the headers for `hang_seconds`, then answers
    normally if the client is still waiting.
    """

    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    STATUS_429 = "status_429"
    RESET = "reset"
    HANG = "hang"


@attrs.frozen
class ReceivedRequest:
    """One request as the mock upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _non_negative_number() -> list[Any]:
    return [validators.instance_of((int, float)), validators.ge(0)]


def _retry_after_value(_instance: object, _attribute: object, value: Any) -> None:
    """A number of seconds, or any header text (sent as latin-1 bytes, for hostile values)."""
    if value is None:
        return
    if isinstance(value, str):
        value.encode("latin-1")  # a UnicodeEncodeError is a ValueError, reported as such
    elif not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"'retry_after' must be a non-negative number or a string, not {value!r}")


def _integer_at_least(minimum: int, *, at_most: int | None = None) -> list[Any]:
    bounds = [validators.ge(minimum)] + ([] if at_most is None else [validators.le(at_most)])
    return [validators.instance_of(int), *bounds]


@attrs.frozen(kw_only=True)
class _Faults:
    """The misbehaviour a request asked for in its `"mock"` object."""

    status: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(400, at_most=599))
    )
    retry_after: float | str | None = attrs.field(default=None, validator=_retry_after_value)
    headers_delay: float = attrs.field(default=0.0, validator=_non_negative_number())
    chunk_delay: float = attrs.field(default=0.0, validator=_non_negative_number())
    chunks: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(1))
    )
    reset_after: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )
    body_bytes: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )
    length_unknown: bool = attrs.field(default=False, validator=validators.instance_of(bool))
    endless_line_bytes: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )


_NO_FAULTS = _Faults()


@attrs.frozen
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    faults: _Faults


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Response:
    """Sends one ASGI response and remembers whether it ended on purpose.

    Hypercorn reports `http.disconnect` after every response, so only a disconnect that arrives
    before the response ended counts as the client going away.
    """

    def __init__(self, send: ASGISendCallable, upstream_name: str) -> None:
        self._send = send
        self._identity = (b"x-mock-upstream", upstream_name.encode())
        self.ended = False

    async def start(self, status: int, content_type: bytes, headers: _Headers = ()) -> None:
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), self._identity, *headers],
            }
        )

    async def send_part(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def abandon(self) -> None:
        """End without completing the body; hypercorn then closes the connection mid-message."""
        self.ended = True

    async def json(self, status: int, payload: object, headers: _Headers = ()) -> None:
        data = orjson.dumps(payload)
        length = (b"content-length", str(len(data)).encode())
        await self.start(status, b"application/json", [*headers, length])
        await self.finish(data)

    async def error(self, status: int, message: str, headers: _Headers = ()) -> None:
        await self.json(status, _error_body(status, message), headers)


class MockUpstream:
    """An OpenAI-compatible provider that records what it receives and fails on request.

    With `failure_rate` above zero it also fails that share of the chat completions that ask for
    no faults themselves, choosing among `fault_kinds` (all of `RandomFault` by default)
    uniformly; a `hang` holds back the headers for `hang_seconds`. Both may be changed while it
    runs, e.g. to let a failing backend recover. Raises ValueError for a rate outside 0..1, a
    negative hang or no fault kinds.
    """

    def __init__(
        self,
        name: str = "mock",
        *,
        failure_rate: float = 0.0,
        seed: int | None = None,
        hang_seconds: float = 30.0,
        fault_kinds: Sequence[RandomFault] = tuple(RandomFault),
    ) -> None:
        if not fault_kinds:
            raise ValueError("fault_kinds must name at least one RandomFault")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate}")
        if not hang_seconds >= 0.0:  # rather than `< 0`, so that NaN is refused too
            raise ValueError(f"hang_seconds must not be negative, not {hang_seconds}")
        self.name = name
        self.failure_rate = failure_rate
        self.hang_seconds = hang_seconds
        self.fault_kinds = tuple(fault_kinds)
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)
        self.requests: list[ReceivedRequest] = []
        self.disconnects = 0
        self.padding_sent = 0
        self._responses: set[_Response] = set()

    @property
    def in_flight(self) -> int:
        """Requests being answered; a response counts as answered once its last byte is sent."""
        return sum(not response.ended for response in self._responses)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; reports the bound base URL, e.g. `http://127.0.0.1:54321`."""
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                hypercorn.trio.serve, self._asgi, _server_config(host, port)
            )
            task_status.started(binds[0])

    async def _asgi(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await _acknowledge_lifespan(receive, send)
        elif scope["type"] == "http":
            await self._handle_http(scope, receive, send)

    async def _handle_http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            headers=_header_dict(scope["headers"]),
            body=body,
        )
        self.requests.append(request)
        response = _Response(send, self.name)
        self._responses.add(response)
        try:
            await self._respond_while_connected(request, len(self.requests), receive, response)
        finally:
            self._responses.discard(response)

    async def _respond_while_connected(
        self,
        request: ReceivedRequest,
        number: int,
        receive: ASGIReceiveCallable,
        response: _Response,
    ) -> None:
        # Hypercorn never cancels the app when the client leaves, so watch for it ourselves.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_disconnect, receive, response, nursery.cancel_scope)
            await self._respond(request, number, response)
            nursery.cancel_scope.cancel()

    async def _stop_on_disconnect(
        self, receive: ASGIReceiveCallable, response: _Response, responding: trio.CancelScope
    ) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not response.ended:
            self.disconnects += 1
        responding.cancel()

    async def _respond(self, request: ReceivedRequest, number: int, response: _Response) -> None:
        route = (request.method, request.path)
        if route == ("GET", "/v1/models"):
            await response.json(200, self._models())
        elif route == ("POST", "/v1/chat/completions"):
            await self._complete_chat(request, number, response)
        else:
            await response.error(404, f"Unknown route: {request.method} {request.path}")

    def _models(self) -> dict[str, Any]:
        model = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": self.name}
        return {"object": "list", "data": [model]}

    async def _complete_chat(
        self, request: ReceivedRequest, number: int, response: _Response
    ) -> None:
        try:
            chat = _parse_chat_request(request.body)
        except _BadRequest as error:
            await response.error(400, error.message)
            return
        fault = self._draw_random_fault() if chat.faults == _NO_FAULTS else None
        if fault is RandomFault.RESET and not chat.stream:
            await _reset_before_body(response)
            return
        if fault is not None:
            chat = attrs.evolve(chat, faults=_faults_acting_out(fault, self.hang_seconds))
        await self._answer_chat(chat, number, response)

    def _draw_random_fault(self) -> RandomFault | None:
        if self._random.random() >= self.failure_rate:
            return None
        fault = self._random.choice(self.fault_kinds)
        self.injected[fault.value] += 1
        return fault

    async def _answer_chat(self, chat: _ChatRequest, number: int, response: _Response) -> None:
        faults = chat.faults
        headers = _retry_after_header(faults.retry_after)
        await trio.sleep(faults.headers_delay)
        if faults.status is not None:
            message = f"mock upstream {self.name} injected status {faults.status}"
            await response.error(faults.status, message, headers)
            return
        if faults.body_bytes is not None and not chat.stream:
            length = (
                () if faults.length_unknown else ((b"content-length", b"%d" % faults.body_bytes),)
            )
            await response.start(200, b"application/json", length)
            await self._send_padding(response, b"", faults.body_bytes, faults.chunk_delay)
            return
        if faults.endless_line_bytes is not None and chat.stream:
            await response.start(200, b"text/event-stream")
            await self._send_padding(
                response, b"data: ", faults.endless_line_bytes, faults.chunk_delay
            )
            return
        pieces = _content_pieces(self._reply(chat.messages), faults.chunks)
        usage = _usage(chat.messages, pieces)
        completion_id = f"chatcmpl-mock-{number}"
        if chat.stream:
            events = _stream_events(completion_id, chat, pieces, usage)
            await _stream(response, events, faults, headers)
        else:
            completion = _completion(completion_id, chat.model, "".join(pieces), usage)
            await response.json(200, completion, headers)

    async def _send_padding(
        self, response: _Response, prefix: bytes, size: int, delay: float
    ) -> None:
        """Send a body of `size` bytes, `prefix` then `x`s, in pieces `delay` apart; nothing
        marks an end (no newline) but the end of the response."""
        remaining = size
        piece = (prefix + _PADDING)[:remaining]
        while remaining:
            await response.send_part(piece)
            self.padding_sent += len(piece)
            remaining -= len(piece)
            piece = _PADDING[:remaining]
            if remaining:
                await trio.sleep(delay)
        await response.finish()

    def _reply(self, messages: list[dict[str, Any]]) -> str:
        said = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        return f"Hello from {self.name}: you said {said[-1] if said else 'nothing'}"


def run_mock_upstream(
    host: str,
    port: int,
    name: str,
    *,
    failure_rate: float = 0.0,
    seed: int | None = None,
    hang_seconds: float = 30.0,
) -> None:
    """Run a mock upstream in the foreground until SIGINT or SIGTERM (`sopy mock-upstream`).

    Raises ValueError, before serving, for options that `MockUpstream` rejects.
    """
    upstream = MockUpstream(name, failure_rate=failure_rate, seed=seed, hang_seconds=hang_seconds)
    trio.run(_serve_until_signalled, upstream, host, port)


async def _serve_until_signalled(upstream: MockUpstream, host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(upstream.serve, host, port)
            print(_listening_line(upstream, base_url), flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def _listening_line(upstream: MockUpstream, base_url: str) -> str:
    line = f"mock upstream '{upstream.name}' listening on {base_url}/v1"
    if upstream.failure_rate:
        line += f", failing chat completions at random with probability {upstream.failure_rate:g}"
    return line


def _server_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    # Hypercorn's own "Running on ..." line would duplicate what callers print.
    config.loglevel = "WARNING"
    config.graceful_timeout = 0.5
    return config


async def _acknowledge_lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    # Answering lifespan events keeps hypercorn from warning about missing lifespan support.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: ASGIReceiveCallable) -> bytes | None:
    """The whole request body, or None if the client left before sending it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            parts.append(message["body"])
            if not message["more_body"]:
                return b"".join(parts)


def _header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def _stream(
    response: _Response, events: list[bytes], faults: _Faults, headers: _Headers
) -> None:
    await response.start(200, b"text/event-stream", [(b"cache-control", b"no-cache"), *headers])
    to_send = events if faults.reset_after is None else events[: faults.reset_after]
    for index, event in enumerate(to_send):
        if index:
            await trio.sleep(faults.chunk_delay)
        await response.send_part(event)
    if faults.reset_after is None:
        await response.finish()
    else:
        response.abandon()


async def _reset_before_body(response: _Response) -> None:
    """Send the headers of a JSON response, then drop the connection before any of its body."""
    await response.start(200, b"application/json")
    response.abandon()


def _faults_acting_out(fault: RandomFault, hang_seconds: float) -> _Faults:
    """The per-request faults that produce a random fault (all but a non-streaming reset)."""
    match fault:
        case RandomFault.STATUS_500:
            return _Faults(status=500)
        case RandomFault.STATUS_503:
            return _Faults(status=503)
        case RandomFault.STATUS_429:
            # A zero wait tells a gateway it may retry at once, on another upstream.
            return _Faults(status=429, retry_after=0)
        case RandomFault.RESET:
            return _Faults(reset_after=1)
        case RandomFault.HANG:
            return _Faults(headers_delay=hang_seconds)


def _parse_chat_request(body: bytes) -> _ChatRequest:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _BadRequest("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = payload.get("model")
    messages = payload.get("messages")
    if not isinstance(model, str):
        raise _BadRequest("'model' must be a string.")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a list of objects.")
    stream_options = payload.get("stream_options")
    return _ChatRequest(
        model=model,
        messages=messages,
        stream=payload.get("stream") is True,
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        faults=_parse_faults(payload.get("mock")),
    )


def _parse_faults(raw: object) -> _Faults:
    if raw is None:
        return _Faults()
    if not isinstance(raw, dict):
        raise _BadRequest("'mock' must be an object.")
    try:
        return _Faults(**raw)
    except (TypeError, ValueError) as error:
        raise _BadRequest(f"Invalid 'mock' object: {error}") from None


def _retry_after_header(value: float | str | None) -> _Headers:
    if value is None:
        return ()
    text = value if isinstance(value, str) else format(value, "g")
    return ((b"retry-after", text.encode("latin-1")),)


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def _content_pieces(content: str, count: int | None) -> list[str]:
    """The reply split into one piece per word, or cycled through its words to `count` pieces."""
    words = content.split()
    total = count or len(words)
    return [words[i % len(words)] + (" " if i < total - 1 else "") for i in range(total)]


def _usage(messages: list[dict[str, Any]], pieces: list[str]) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in messages)
    completion = len(pieces)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(
    completion_id: str, model: str, content: str, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def _stream_events(
    completion_id: str, chat: _ChatRequest, pieces: list[str], usage: dict[str, int]
) -> list[bytes]:
    """Every server-sent event of a streamed completion, in order, ending with `[DONE]`."""
    # With include_usage, OpenAI puts `"usage": null` on every chunk but the last.
    usage_placeholder: dict[str, Any] = {"usage": None} if chat.include_usage else {}
    deltas = [{"role": "assistant", "content": pieces[0]}] + [{"content": p} for p in pieces[1:]]
    choices = [_stream_choice(delta, None) for delta in deltas] + [_stream_choice({}, "stop")]
    events = [
        _chunk_event(completion_id, chat.model, [choice], usage_placeholder) for choice in choices
    ]
    if chat.include_usage:
        events.append(_chunk_event(completion_id, chat.model, [], {"usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def _stream_choice(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


def _chunk_event(
    completion_id: str, model: str, choices: list[dict[str, Any]], extra: dict[str, Any]
) -> bytes:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _error_body(status: int, message: str) -> dict[str, Any]:
    error_type, code = "invalid_request_error", None
    if status == 429:
        error_type, code = "rate_limit_error", "rate_limit_exceeded"
    elif status >= 500:
        error_type = "server_error"
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
