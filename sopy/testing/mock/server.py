"""`MockUpstream`: a deterministic stand-in for OpenAI's and Anthropic's APIs that records every
request it receives and fails on request; `run_mock_upstream` runs one for `sopy mock-upstream`.

The server is hypercorn serving a plain ASGI app on trio. This module owns the route table, the
modes, the records tests read (`requests`, `websocket_messages`, `disconnects`, `in_flight`,
`padding_sent`, `injected`) and the chat completion faults; the routes' payloads come from
`chat`, `openai_routes`, `responses` and `anthropic`. Every route lives under `/v1`, as at a
real provider, so a backend URL is the mock's base URL plus `/v1` (or its `base_path`).

`base_path` (default `/v1`) is where the API lives, e.g. `/openai/v1` as at Azure OpenAI or
`/v1beta/openai` as at Gemini; `requests` record the path as received. Modes: the default serves
every route; `chat_only` serves only `GET /v1/models` and
`POST /v1/chat/completions` and answers 404 to everything else, as a typical self-hosted server
does; `anthropic_strict` serves only the Messages routes and checks headers and bodies as
Anthropic does; `websocket=False` refuses the Responses WebSocket mode (404 to the upgrade), as
providers that lack it do.

For chaos tests and demos, `failure_rate` turns on a server-wide random failure mode: each chat
completion that asks for no faults itself fails, with that probability, in one of the
`RandomFault` ways, drawn from a generator seeded by `seed` so that a run can be replayed.
`injected` counts what was drawn. `GET /v1/models` never fails.
"""

import random
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import hypercorn.trio
import orjson
import trio
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
    WebsocketSendEvent,
)

from sopy.testing.mock import anthropic, openai_routes, responses
from sopy.testing.mock.chat import (
    ChatRequest,
    chat_completion,
    chat_stream_events,
    chat_usage,
    last_user_text,
    parse_chat_request,
    tool_call_completion,
    tool_call_stream_events,
    tool_calls,
    tools_called,
)
from sopy.testing.mock.exchange import Exchange, stream_parts
from sopy.testing.mock.faults import (
    FAULTS_HEADER,
    NO_FAULTS,
    Faults,
    RandomFault,
    faults_acting_out,
    requested_faults,
    retry_after_header,
)
from sopy.testing.mock.http import (
    MockResponse,
    ReceivedRequest,
    RouteError,
    anthropic_error_body,
    header_dict,
    openai_error_body,
    read_body,
)
from sopy.testing.mock.text import CREATED, pieces_of, reply_text

MODEL_ID = "mock-model"

_PADDING = b"x" * 65536
_Route = Callable[[Exchange], Awaitable[None]]
_RESPONSE_ID_ROUTE = re.compile(r"/v1/responses/(?P<id>[^/]+)(?P<action>/cancel|/input_items)?")
_ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_CHAT_ONLY_ROUTES = frozenset({("GET", "/v1/models"), ("POST", "/v1/chat/completions")})


class MockUpstream:
    """An OpenAI- and Anthropic-compatible provider that records what it receives and fails on
    request.

    With `failure_rate` above zero it also fails that share of the chat completions that ask for
    no faults themselves, choosing among `fault_kinds` (all of `RandomFault` by default)
    uniformly; a `hang` holds back the headers for `hang_seconds`. Both may be changed while it
    runs, e.g. to let a failing backend recover. Raises ValueError for a rate outside 0..1, a
    negative hang, no fault kinds, or both `chat_only` and `anthropic_strict`.
    """

    def __init__(
        self,
        name: str = "mock",
        *,
        failure_rate: float = 0.0,
        seed: int | None = None,
        hang_seconds: float = 30.0,
        fault_kinds: Sequence[RandomFault] = tuple(RandomFault),
        chat_only: bool = False,
        anthropic_strict: bool = False,
        websocket: bool = True,
        base_path: str = "/v1",
    ) -> None:
        if not re.fullmatch(r"(/[^/]+)+", base_path):
            raise ValueError(f"base_path must be a path like /v1 or /openai/v1, not {base_path!r}")
        if not fault_kinds:
            raise ValueError("fault_kinds must name at least one RandomFault")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate}")
        if not hang_seconds >= 0.0:  # rather than `< 0`, so that NaN is refused too
            raise ValueError(f"hang_seconds must not be negative, not {hang_seconds}")
        if chat_only and anthropic_strict:
            raise ValueError("chat_only and anthropic_strict exclude each other")
        self.name = name
        self.failure_rate = failure_rate
        self.hang_seconds = hang_seconds
        self.fault_kinds = tuple(fault_kinds)
        self.chat_only = chat_only
        self.anthropic_strict = anthropic_strict
        self.websocket = websocket and not (chat_only or anthropic_strict)
        self.base_path = base_path
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)
        self.requests: list[ReceivedRequest] = []
        self.websocket_messages: list[str] = []
        self.disconnects = 0
        self.padding_sent = 0
        self.stored = responses.ResponseStore()
        self._answers = 0
        self._responses: set[MockResponse] = set()
        self._openai_routes: dict[tuple[str, str], _Route] = {
            ("GET", "/v1/models"): self._list_models,
            ("POST", "/v1/chat/completions"): self._complete_chat,
            ("POST", "/v1/completions"): openai_routes.complete_text,
            ("POST", "/v1/embeddings"): openai_routes.embed,
            ("POST", "/v1/moderations"): openai_routes.moderate,
            ("POST", "/v1/images/generations"): openai_routes.generate_images,
            ("POST", "/v1/images/edits"): openai_routes.edit_images,
            ("POST", "/v1/audio/transcriptions"): openai_routes.transcribe,
            ("POST", "/v1/audio/translations"): openai_routes.transcribe,
            ("POST", "/v1/audio/speech"): openai_routes.speak,
            ("POST", "/v1/responses"): self._create_response,
            ("POST", "/v1/responses/input_tokens"): responses.count_input_tokens,
            ("POST", "/v1/responses/compact"): self._compact_responses,
        }

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

    def _next_number(self) -> int:
        """Numbers every answer (HTTP request or WebSocket `response.create`) for its ids."""
        self._answers += 1
        return self._answers

    async def _asgi(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await _acknowledge_lifespan(receive, send)
        elif scope["type"] == "http":
            await self._handle_http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._handle_websocket(scope, receive, send)

    async def _handle_http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        body = await read_body(receive)
        if body is None:
            return
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            headers=header_dict(scope["headers"]),
            body=body,
            query=scope["query_string"].decode("latin-1"),
        )
        self.requests.append(request)
        number = self._next_number()
        response = MockResponse(send, self.name, f"req_{self.name}_{number}")
        exchange = Exchange(request, number, response, self.name)
        self._responses.add(response)
        try:
            await self._respond_while_connected(exchange, receive)
        finally:
            self._responses.discard(response)

    async def _respond_while_connected(
        self, exchange: Exchange, receive: ASGIReceiveCallable
    ) -> None:
        # Hypercorn never cancels the app when the client leaves, so watch for it ourselves.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                self._stop_on_disconnect, receive, exchange.response, nursery.cancel_scope
            )
            await self._respond(exchange)
            nursery.cancel_scope.cancel()

    async def _stop_on_disconnect(
        self, receive: ASGIReceiveCallable, response: MockResponse, responding: trio.CancelScope
    ) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not response.ended:
            self.disconnects += 1
        responding.cancel()

    async def _respond(self, exchange: Exchange) -> None:
        request = exchange.request
        route_path = self._route_path(request.path)
        is_anthropic = route_path in _ANTHROPIC_PATHS
        if is_anthropic:
            exchange.response.request_id_header = b"request-id"
        try:
            route = self._route(request, route_path, is_anthropic)
            if route != self._complete_chat:
                faults = await _act_out_simple_faults(request, self.name)
                exchange = attrs.evolve(exchange, faults=faults)
            await route(exchange)
        except RouteError as error:
            body = (
                anthropic_error_body(error, exchange.response.request_id)
                if is_anthropic or self.anthropic_strict
                else openai_error_body(error)
            )
            await exchange.response.json(error.status, body, error.headers)

    def _route_path(self, path: str) -> str | None:
        """The path of a route in the table (`/v1/...`), if `path` is under the base path."""
        if not path.startswith(self.base_path + "/"):
            return None
        return "/v1" + path.removeprefix(self.base_path)

    def _route(self, request: ReceivedRequest, path: str | None, is_anthropic: bool) -> _Route:
        """The handler for `path`, the request's path seen from the base path (None if outside)."""
        method = request.method
        unknown = RouteError(404, f"Unknown route: {method} {request.path}")
        if path is None:
            raise unknown
        if self.chat_only and (method, path) not in _CHAT_ONLY_ROUTES:
            raise unknown
        if self.anthropic_strict and not is_anthropic:
            raise unknown
        if is_anthropic:
            if method != "POST":
                raise unknown
            return self._anthropic_route(path)
        route = self._openai_routes.get((method, path)) or self._response_id_route(method, path)
        if route is None:
            raise unknown
        return route

    def _anthropic_route(self, path: str) -> _Route:
        strict = self.anthropic_strict

        async def answer(exchange: Exchange) -> None:
            if strict:
                anthropic.check_headers(exchange)
            if path.endswith("count_tokens"):
                await anthropic.count_tokens(exchange, strict=strict)
            else:
                await anthropic.create_message(exchange, strict=strict)

        return answer

    def _response_id_route(self, method: str, path: str) -> _Route | None:
        match = _RESPONSE_ID_ROUTE.fullmatch(path)
        if match is None:
            return None
        response_id, action = match["id"], match["action"]
        handler = {
            ("GET", None): responses.retrieve,
            ("DELETE", None): responses.delete,
            ("POST", "/cancel"): responses.cancel,
            ("GET", "/input_items"): responses.input_items,
        }.get((method, action))
        if handler is None:
            return None
        store = self.stored

        async def answer(exchange: Exchange) -> None:
            await handler(exchange, store, response_id)

        return answer

    async def _create_response(self, exchange: Exchange) -> None:
        await responses.create(exchange, self.stored)

    async def _compact_responses(self, exchange: Exchange) -> None:
        await responses.compact(exchange, self.stored)

    async def _list_models(self, exchange: Exchange) -> None:
        model = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": self.name}
        await exchange.response.json(200, {"object": "list", "data": [model]})

    async def _handle_websocket(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """OpenAI's Responses WebSocket mode: each `response.create` message is answered with
        the events of the SSE stream, one JSON message each."""
        if (await receive())["type"] != "websocket.connect":
            return
        self.requests.append(
            ReceivedRequest(
                method="GET",
                path=scope["path"],
                headers=header_dict(scope["headers"]),
                body=b"",
                query=scope["query_string"].decode("latin-1"),
            )
        )
        if not self.websocket or self._route_path(scope["path"]) != "/v1/responses":
            await _refuse_websocket(scope, send, f"Unknown route: GET {scope['path']} (websocket)")
            return
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            text = message.get("text") or (message.get("bytes") or b"").decode()
            self.websocket_messages.append(text)
            for event in self._websocket_answer(text):
                sent: WebsocketSendEvent = {
                    "type": "websocket.send",
                    "bytes": None,
                    "text": orjson.dumps(event).decode(),
                }
                await send(sent)

    def _websocket_answer(self, text: str) -> list[dict[str, Any]]:
        try:
            payload = orjson.loads(text)
            if not isinstance(payload, dict) or payload.get("type") != "response.create":
                raise RouteError(400, "Expected a JSON message of type 'response.create'.")
            body = {key: value for key, value in payload.items() if key != "type"}
            run = responses.run_response(self.name, self._next_number(), body, self.stored)
        except orjson.JSONDecodeError:
            error = RouteError(400, "The message is not valid JSON.")
        except RouteError as refusal:
            error = refusal
        else:
            return run.events
        return [{"type": "error", "status": error.status, **openai_error_body(error)}]

    async def _complete_chat(self, exchange: Exchange) -> None:
        chat = parse_chat_request(exchange.request.body)
        if FAULTS_HEADER in exchange.request.headers:
            faults = requested_faults(exchange.request.headers, None)
            chat = attrs.evolve(chat, faults=faults)
        fault = self._draw_random_fault() if chat.faults == NO_FAULTS else None
        if fault is RandomFault.RESET and not chat.stream:
            await _reset_before_body(exchange.response)
            return
        if fault is not None:
            chat = attrs.evolve(chat, faults=faults_acting_out(fault, self.hang_seconds))
        await self._answer_chat(chat, exchange.number, exchange.response)

    def _draw_random_fault(self) -> RandomFault | None:
        if self._random.random() >= self.failure_rate:
            return None
        fault = self._random.choice(self.fault_kinds)
        self.injected[fault.value] += 1
        return fault

    async def _answer_chat(self, chat: ChatRequest, number: int, response: MockResponse) -> None:
        faults = chat.faults
        headers = retry_after_header(faults.retry_after)
        await trio.sleep(faults.headers_delay)
        if faults.status is not None:
            message = f"mock upstream {self.name} injected status {faults.status}"
            raise RouteError(faults.status, message, headers=headers)
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
        completion_id = f"chatcmpl-mock-{number}"
        called = tools_called(chat)
        if called:
            calls = tool_calls(chat, number, called)
            arguments = " ".join(call["function"]["arguments"] for call in calls)
            usage = chat_usage(chat.messages, pieces_of(arguments))
            if chat.stream:
                events = tool_call_stream_events(completion_id, chat, calls, usage)
                await stream_parts(response, events, faults, headers=headers)
            else:
                completion = tool_call_completion(completion_id, chat.model, calls, usage)
                await response.json(200, completion, headers)
            return
        reply = reply_text(self.name, last_user_text(chat.messages))
        pieces = pieces_of(reply, faults.chunks)
        usage = chat_usage(chat.messages, pieces)
        if chat.stream:
            events = chat_stream_events(completion_id, chat, pieces, usage)
            await stream_parts(response, events, faults, headers=headers)
        else:
            completion = chat_completion(completion_id, chat.model, "".join(pieces), usage)
            await response.json(200, completion, headers)

    async def _send_padding(
        self, response: MockResponse, prefix: bytes, size: int, delay: float
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


async def _act_out_simple_faults(request: ReceivedRequest, upstream_name: str) -> Faults:
    """The faults every JSON route honours (from the body's `"mock"` or the `x-mock-faults`
    header): a delay before the headers, an error; the stream faults (`chunk_delay`,
    `reset_after`) are left to `send_parts`."""
    body_faults = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            payload = None  # the route itself reports the bad body
        if isinstance(payload, dict):
            body_faults = payload.get("mock")
    faults = requested_faults(request.headers, body_faults)
    await trio.sleep(faults.headers_delay)
    if faults.status is not None:
        raise RouteError(
            faults.status,
            f"mock upstream {upstream_name} injected status {faults.status}",
            headers=retry_after_header(faults.retry_after),
        )
    return faults


async def _refuse_websocket(scope: WebsocketScope, send: ASGISendCallable, message: str) -> None:
    """Answer the upgrade with an OpenAI-shaped 404, as an HTTP provider without it would."""
    if "websocket.http.response" not in scope.get("extensions", {}) or {}:
        await send({"type": "websocket.close", "code": 1000, "reason": ""})
        return
    body = orjson.dumps(openai_error_body(RouteError(404, message)))
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def run_mock_upstream(
    host: str,
    port: int,
    name: str,
    *,
    failure_rate: float = 0.0,
    seed: int | None = None,
    hang_seconds: float = 30.0,
    chat_only: bool = False,
    anthropic_strict: bool = False,
    websocket: bool = True,
    base_path: str = "/v1",
) -> None:
    """Run a mock upstream in the foreground until SIGINT or SIGTERM (`sopy mock-upstream`).

    Raises ValueError, before serving, for options that `MockUpstream` rejects.
    """
    upstream = MockUpstream(
        name,
        failure_rate=failure_rate,
        seed=seed,
        hang_seconds=hang_seconds,
        chat_only=chat_only,
        anthropic_strict=anthropic_strict,
        websocket=websocket,
        base_path=base_path,
    )
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
    line = f"mock upstream '{upstream.name}' listening on {base_url}{upstream.base_path}"
    if upstream.chat_only:
        line += ", chat completions and models only"
    elif upstream.anthropic_strict:
        line += ", Anthropic Messages only, checked strictly"
    elif not upstream.websocket:
        line += ", without the Responses WebSocket mode"
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


async def _reset_before_body(response: MockResponse) -> None:
    """Send the headers of a JSON response, then drop the connection before any of its body."""
    await response.start(200, b"application/json")
    response.abandon()
