"""The HTTP front actor: hypercorn serving Sopy's public, OpenAI-compatible ASGI app.

It authenticates and routes every request from an in-memory `RouteTable` derived from the
config actor's latest snapshot (no disk and no await on the config actor on the request path),
hands model requests to the provider's upstream pool as a `ForwardRequest`, and relays the
pool's `ResponseStart` / `ResponseChunk` / `ResponseEnd` back to the client as they arrive.
A client that goes away mid-request cancels the upstream exchange.
"""

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import hypercorn.trio
import orjson
import trio
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from sopy.actors.upstream_pool import UpstreamPools
from sopy.change_feed import ChangeFeed
from sopy.docs_page import docs_response
from sopy.errors import (
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NoBackendAvailable,
    NotFound,
    PayloadTooLarge,
    SopyError,
    StartupError,
    UpstreamError,
    innermost,
)
from sopy.http_headers import is_event_stream, upstream_request_headers
from sopy.messages import (
    ConfigChanged,
    ForwardRequest,
    ResponseChunk,
    ResponseEnd,
    ResponseStart,
    UpstreamEvent,
    UpstreamFailed,
)
from sopy.openapi import openapi_json
from sopy.route_table import RouteTable
from sopy.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
RELAY_BUFFER = 32

Handler = Callable[[HTTPScope, ASGIReceiveCallable, ASGISendCallable, bytes], Awaitable[None]]


class UpstreamBrokeOff(Exception):
    """Raised to make hypercorn drop a non-streaming response whose upstream body broke off, so
    the client sees an incomplete response rather than a truncated body that looks whole."""


class ClientGone(Exception):
    """The client disconnected before its request body had arrived."""


@attrs.define
class _RelayState:
    finished: bool = False


class HttpFront:
    def __init__(self, settings: Settings, feed: ChangeFeed, pools: UpstreamPools) -> None:
        self._settings = settings
        self._feed = feed
        self._pools = pools
        self._table_source: ConfigChanged | None = None
        self._table: RouteTable | None = None
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self._hello_world,
            ("GET", "/healthz"): self._health,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._proxy,
            ("GET", "/openapi.json"): self._openapi,
        }

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if self._settings.no_auth:
            log.warning(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach %s:%d can spend your "
                "provider credentials. Use this only for local experiments.",
                self._settings.host,
                self._settings.port,
            )
        async with trio.open_nursery() as nursery:
            try:
                binds: list[str] = await nursery.start(
                    _serve, self, _hypercorn_config(self._settings)
                )
            except* OSError as failures:
                first = innermost(failures)
                reason = first.strerror if isinstance(first, OSError) else None
                raise StartupError(
                    f"cannot listen on {self._settings.host}:{self._settings.port}: "
                    f"{reason or first}; stop whatever uses that port or pass --port"
                ) from None
            log.info("serving the OpenAI API on %s", binds[0])
            task_status.started(binds[0])

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = os.urandom(8).hex().encode()
        try:
            handler = self._handler_for(scope["method"], scope["path"])
            await handler(scope, receive, send, request_id)
        except SopyError as error:
            await _send_json(send, error.status, error.openai_body(), request_id)
        except ClientGone:
            log.debug("client went away before sending its whole request")

    def _handler_for(self, method: str, path: str) -> Handler:
        handler = self._routes.get((method, path))
        if handler is not None:
            return handler
        if path.startswith("/hello/") and len(path) > len("/hello/"):
            if method == "GET":
                return self._hello_name
            raise MethodNotAllowed(f"{path} only accepts GET")
        if path == "/docs" or path.startswith("/docs/"):
            if method == "GET":
                return self._docs
            raise MethodNotAllowed(f"{path} only accepts GET")
        allowed = sorted(m for m, p in self._routes if p == path)
        if allowed:
            raise MethodNotAllowed(f"{path} only accepts {', '.join(allowed)}")
        raise NotFound(
            f"Unknown request URL: {method} {path}. The gateway serves POST "
            "/v1/chat/completions and GET /v1/models."
        )

    def _route_table(self) -> RouteTable:
        latest = self._feed.latest
        if latest is None:
            raise NoBackendAvailable("the configuration is still loading; retry in a moment")
        if latest is not self._table_source or self._table is None:
            self._table = RouteTable.from_snapshot(latest.snapshot)
            self._table_source = latest
        return self._table

    async def _hello_world(
        self, _scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        await _send_json(send, 200, {"message": "Hello World"}, rid)

    async def _hello_name(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        name = scope["path"][len("/hello/") :]
        await _send_json(send, 200, {"message": f"Hello {name}"}, rid)

    async def _openapi(
        self, _scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        await _send_body(send, 200, openapi_json(), rid)

    async def _docs(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        answer = docs_response(scope["path"])
        if answer is None:
            raise NotFound(f"no documentation at {scope['path']}; the docs page is GET /docs")
        status, content_type, body = answer
        await _send_body(send, status, body, rid, content_type=content_type)

    async def _health(
        self, _scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        table = self._route_table()
        await _send_json(send, 200, {"status": "ok", "config_version": table.version}, rid)

    async def _models(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        table = self._route_table()
        self._authenticate(table, scope)
        await _send_body(send, 200, table.models_body, rid)

    def _authenticate(self, table: RouteTable, scope: HTTPScope) -> None:
        if not self._settings.no_auth:
            table.authenticate(_header(scope, b"authorization"))

    async def _proxy(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        table = self._route_table()
        self._authenticate(table, scope)
        body = await _read_body(scope, receive)
        route = table.route_for(_requested_model(body))
        inbox = self._pools.inbox_for(route.provider)
        events_send, events = trio.open_memory_channel[UpstreamEvent](RELAY_BUFFER)
        forward = ForwardRequest(
            request_id=rid.decode(),
            method=scope["method"],
            path=_upstream_path(scope),
            headers=upstream_request_headers(list(scope["headers"])),
            body=body,
            route=route,
            cancel_scope=trio.CancelScope(),
            reply_to=events_send,
        )
        try:
            await inbox.send(forward)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise NoBackendAvailable(
                f"provider '{route.provider}' was just removed from the configuration"
            ) from None
        await _relay(forward, events, receive, send, rid)


async def _serve(
    app: HttpFront, config: Config, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    await hypercorn.trio.serve(app, config, mode="asgi", task_status=task_status)


def _hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def _relay(
    forward: ForwardRequest,
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    rid: bytes,
) -> None:
    state = _RelayState()
    async with events, trio.open_nursery() as nursery:
        nursery.start_soon(
            _cancel_when_client_leaves, receive, forward, nursery.cancel_scope, state
        )
        await _pump(events, send, rid, state)
        nursery.cancel_scope.cancel()


async def _cancel_when_client_leaves(
    receive: ASGIReceiveCallable,
    forward: ForwardRequest,
    relay_scope: trio.CancelScope,
    state: _RelayState,
) -> None:
    # hypercorn never cancels the app when a client leaves; it only says so through receive().
    while (await receive())["type"] != "http.disconnect":
        pass
    if not state.finished:
        log.info("request %s: client went away; cancelling upstream", forward.request_id)
        forward.cancel_scope.cancel()
        relay_scope.cancel()


async def _pump(
    events: trio.MemoryReceiveChannel[UpstreamEvent],
    send: ASGISendCallable,
    rid: bytes,
    state: _RelayState,
) -> None:
    start = await _next_event(events)
    if isinstance(start, UpstreamFailed):
        state.finished = True
        await _send_json(send, start.error.status, start.error.openai_body(), rid)
        return
    assert isinstance(start, ResponseStart), start
    streaming = is_event_stream(start.headers)
    await send(
        {
            "type": "http.response.start",
            "status": start.status,
            "headers": [*start.headers, (b"x-request-id", rid)],
            "trailers": False,
        }
    )
    while True:
        event = await _next_event(events)
        if isinstance(event, ResponseChunk):
            await send({"type": "http.response.body", "body": event.data, "more_body": True})
            continue
        error = event.error if isinstance(event, ResponseEnd) else "the upstream pool stopped"
        if error is not None and not streaming:
            raise UpstreamBrokeOff(error)
        state.finished = True
        final = b"" if error is None else _sse_error_event(error)
        await send({"type": "http.response.body", "body": final, "more_body": False})
        return


async def _next_event(events: trio.MemoryReceiveChannel[UpstreamEvent]) -> UpstreamEvent:
    try:
        return await events.receive()
    except trio.EndOfChannel:
        return UpstreamFailed(
            UpstreamError("the upstream pool stopped while handling this request; retry it")
        )


def _sse_error_event(message: str) -> bytes:
    body = UpstreamError(message).openai_body()
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _requested_model(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJson(
            "We could not parse the JSON body of your request. Send a JSON object with "
            "'Content-Type: application/json'."
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    if not isinstance(payload.get("stream", False), bool | None):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    if not isinstance(payload.get("stream_options", {}), dict | None):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    return model


async def _read_body(scope: HTTPScope, receive: ASGIReceiveCallable) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message["body"]
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")


def _upstream_path(scope: HTTPScope) -> str:
    path = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
    query = scope["query_string"].decode("latin-1")
    return f"{path}?{query}" if query else path


def _header(scope: HTTPScope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_json(send: ASGISendCallable, status: int, payload: Any, rid: bytes) -> None:
    await _send_body(send, status, orjson.dumps(payload), rid)


async def _send_body(
    send: ASGISendCallable,
    status: int,
    body: bytes,
    rid: bytes,
    content_type: bytes = b"application/json",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _answer_lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
