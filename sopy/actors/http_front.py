"""The HTTP front actor: hypercorn serving Sopy's public, OpenAI-compatible ASGI app.

It authenticates and routes every request from an in-memory `RouteTable` derived from the
config actor's latest snapshot (no disk and no await on the config actor on the request path),
and hands each model request to `sopy.relay`, which forwards it to the provider's upstream pool
and relays the answer back as it arrives.
"""

import logging
import os
from collections.abc import Awaitable, Callable

import hypercorn.trio
import orjson
import trio
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from sopy.actors.upstream_pool import UpstreamPools
from sopy.asgi_responses import send_body, send_json
from sopy.change_feed import ChangeFeed
from sopy.docs_page import docs_response
from sopy.errors import (
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NoBackendAvailable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    SopyError,
    StartupError,
    innermost,
)
from sopy.messages import (
    ConfigChanged,
)
from sopy.openapi import openapi_json
from sopy.relay import CLIENT_CLOSED_REQUEST, ProxiedRequest, log_access, proxy
from sopy.route_table import RouteTable
from sopy.settings import Settings

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024


Handler = Callable[[HTTPScope, ASGIReceiveCallable, ASGISendCallable, bytes], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body had arrived."""


class HttpFront:
    def __init__(self, settings: Settings, feed: ChangeFeed, pools: UpstreamPools) -> None:
        self._settings = settings
        self._feed = feed
        self._pools = pools
        self._draining = trio.Event()
        self._request_slots = trio.CapacityLimiter(settings.max_concurrent_requests)
        self.stopped = trio.Event()
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
        try:
            await self._serve(task_status)
        finally:
            self.stopped.set()

    def stop_accepting(self) -> None:
        """Begin a graceful stop: no new connections; in-flight requests get `drain_timeout`."""
        self._draining.set()

    async def _serve(self, task_status: trio.TaskStatus[str]) -> None:
        async with trio.open_nursery() as nursery:
            try:
                binds: list[str] = await nursery.start(
                    _serve, self, _hypercorn_config(self._settings), self._draining.wait
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
            try:
                self._request_slots.acquire_nowait()
            except trio.WouldBlock:
                raise ServerBusy(
                    f"the gateway is serving its limit of {self._settings.max_concurrent_requests} "
                    "requests at once; retry shortly"
                ) from None
            try:
                await handler(scope, receive, send, request_id)
            finally:
                self._request_slots.release()
        except SopyError as error:
            await send_json(
                send, error.status, error.openai_body(), request_id, error.response_headers()
            )
        except ClientGone:
            log.debug("client went away before sending its whole request")

    def _handler_for(self, method: str, path: str) -> Handler:
        handler = self._routes.get((method, path))
        if handler is not None:
            return handler
        if path.startswith("/hello/") and len(path) > len("/hello/"):
            if method == "GET":
                return self._hello_name
            raise MethodNotAllowed(path, method, ["GET"])
        if path == "/docs" or path.startswith("/docs/"):
            if method == "GET":
                return self._docs
            raise MethodNotAllowed(path, method, ["GET"])
        allowed = sorted(m for m, p in self._routes if p == path)
        if allowed:
            raise MethodNotAllowed(path, method, allowed)
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
        await send_json(send, 200, {"message": "Hello World"}, rid)

    async def _hello_name(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        name = scope["path"][len("/hello/") :]
        await send_json(send, 200, {"message": f"Hello {name}"}, rid)

    async def _openapi(
        self, _scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        await send_body(send, 200, openapi_json(), rid)

    async def _docs(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        answer = docs_response(scope["path"])
        if answer is None:
            raise NotFound(f"no documentation at {scope['path']}; the docs page is GET /docs")
        status, content_type, body = answer
        await send_body(send, status, body, rid, content_type=content_type)

    async def _health(
        self, _scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        table = self._route_table()
        await send_json(send, 200, {"status": "ok", "config_version": table.version}, rid)

    async def _models(
        self, scope: HTTPScope, _receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        table = self._route_table()
        self._authenticate(table, scope)
        await send_body(send, 200, table.models_body, rid)

    def _authenticate(self, table: RouteTable, scope: HTTPScope) -> int | None:
        """The caller's user key id (None with --no-auth), or raise 401."""
        if self._settings.no_auth:
            return None
        return table.authenticate(_header(scope, b"authorization"))

    async def _proxy(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable, rid: bytes
    ) -> None:
        request = ProxiedRequest(rid)
        try:
            table = self._route_table()
            request.key_id = self._authenticate(table, scope)
            body = await _read_body(scope, receive, self._settings)
            request.model = _requested_model(body)
            routes = table.routes_for(request.model)
            await proxy(self._pools, routes, request, scope, body, receive, send)
        except SopyError as error:
            request.status = error.status
            raise
        except ClientGone:
            request.status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            log_access(request)


async def _serve(
    app: HttpFront,
    config: Config,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    await hypercorn.trio.serve(
        app, config, mode="asgi", shutdown_trigger=shutdown_trigger, task_status=task_status
    )


def _hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    config.graceful_timeout = settings.drain_timeout
    # hypercorn treats a connection as idle until a request head is complete, so this also
    # bounds how long a client may take to send its headers (slow-loris).
    config.keep_alive_timeout = settings.header_timeout
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    return config


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


async def _read_body(scope: HTTPScope, receive: ASGIReceiveCallable, settings: Settings) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to be too large, and with a
    408 if the client takes longer than `body_timeout` to send it."""
    limit = settings.max_body_bytes
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(settings.body_timeout):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message["body"]
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    raise RequestTimeout(
        f"The request body did not arrive within {settings.body_timeout:g} s; send it faster "
        "or in one piece."
    )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


def _header(scope: HTTPScope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _answer_lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
