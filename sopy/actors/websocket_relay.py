"""The Responses API's WebSocket mode (`GET /v1/responses` with `Upgrade: websocket`, the
transport of OpenAI's Codex), relayed to a backend's own WebSocket mode.

The HTTP front authenticates the upgrade request, then hands its connection here. The model is
only known from the client's first message (a `response.create`), so "answer at once with 426"
works in two steps, both learnt from the configuration and from backends:

- before upgrading, the front answers `426 Upgrade Required` (an OpenAI-shaped JSON error, code
  `websocket_not_supported`) when no configured provider can serve the mode: its kind has no
  WebSocket mode (only `openai` has one), or every one of its backends has already refused an
  upgrade (`WebsocketSupport` remembers refusals per backend URL, in memory, for the process's
  life; a backend added later is tried afresh). Clients then use plain HTTP without retrying;
- after upgrading, the first message's model (or its `previous_response_id`, whose backend is
  then the only one tried) chooses the provider chain; each backend not known to refuse is
  tried in turn until one accepts. A refusal marks that backend; an answer saying it cannot take
  one now (429, 5xx) or refusing the credential (401, 403) does not. If none accepts, the
  client gets one `error` event (`status` 426 if every backend refused, else 502/504) and the
  connection closes, so that its next attempt is refused before upgrading.

Once connected, messages are relayed both ways as they come, unchanged, each bounded in size
(client to backend by `--max-body-bytes`, backend to client by `--max-response-bytes`; a larger
one closes the connection with code 1009). The connection stays with its backend: every later
`response.create` goes there, whatever its model. The id of every response the backend creates
(`response.created` events) is remembered for its HTTP follow-ups, as on the HTTP route, and
the usage of every response that ends (`response.completed`, `.incomplete`, `.failed`) is
handed to `response_ended`, one usage record per response. A
client that stops reading is cut off after `--send-timeout`, as on HTTP (the server's watchdog
watches the connection it handed over), and once the relay ends, closing both connections gets
that long too. Why a backend could not take the connection goes to the access log line only.
"""

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import attrs
import orjson
import trio
import trio_websocket

from sopy.errors import (
    InvalidJson,
    InvalidRequest,
    SopyError,
    UpgradeRequired,
    UpstreamError,
    UpstreamTimeout,
)
from sopy.messages import ProviderRoute, TokenCounts
from sopy.protocol.server import HttpExchange
from sopy.provider_kinds import PROVIDER_KINDS
from sopy.routing.forwarded_headers import credential_header
from sopy.routing.response_affinity import ResponseAffinity, previous_response_route
from sopy.routing.response_ids import id_of_created_event
from sopy.routing.retry_policy import is_retryable_status
from sopy.routing.route_table import RouteTable
from sopy.routing.usage_counts import ends_a_response, usage_of_body
from sopy.settings import Settings

log = logging.getLogger(__name__)

# Provider kinds whose API has the Responses WebSocket mode.
WEBSOCKET_KINDS = frozenset({"openai"})
# Client headers the backend sees besides the credential.
_FORWARDED_HEADERS = frozenset({b"openai-beta", b"openai-organization", b"openai-project"})
_CLOSE_NORMAL = 1000
_CLOSE_POLICY = 1008


class WebsocketSupport:
    """The backends that refused the WebSocket mode, learnt from their refused upgrades."""

    def __init__(self) -> None:
        self._refused: set[str] = set()

    def mark_refused(self, backend: str) -> None:
        self._refused.add(backend)

    def usable_backends(self, route: ProviderRoute) -> list[str]:
        if route.kind not in WEBSOCKET_KINDS:
            return []
        return [url for url in route.urls if url not in self._refused]

    def check_any_usable(self, routes: Mapping[str, ProviderRoute]) -> None:
        """Raise the 426 to answer before upgrading if no provider can serve the mode."""
        if not any(self.usable_backends(route) for route in routes.values()):
            raise UpgradeRequired(
                "No provider behind this gateway serves the Responses API's WebSocket mode; "
                "use POST /v1/responses (HTTP, with stream: true for events) instead."
            )


@attrs.frozen
class WebsocketClient:
    """What the relay needs to know of the client: its key, request id and headers, and, for a
    key with a `models` allow-list, the check of each `response.create`'s model (raises
    `ModelNotAllowed`; `sopy.routing.key_limits`)."""

    key_id: int | None
    request_id: str
    headers: tuple[tuple[bytes, bytes], ...] = attrs.field(repr=False)  # has the user key
    screen_model: Callable[[str], None] | None = None


@attrs.define
class WebsocketOutcome:
    """For the access log line: where the connection went, or why it ended early."""

    provider: str | None = None
    backend: str | None = None
    model: str = "-"
    status: int = 101
    failure: str | None = None


async def relay_websocket(
    exchange: HttpExchange,
    client_info: WebsocketClient,
    table: RouteTable,
    support: WebsocketSupport,
    affinity: ResponseAffinity,
    settings: Settings,
    outcome: WebsocketOutcome,
    response_ended: Callable[[TokenCounts | None], None],
) -> None:
    """Upgrade the exchange's connection and relay it to a backend until either side closes;
    `response_ended` gets the usage of each response as it ends."""
    closing = _closed_within(settings.send_timeout, client_info.request_id)
    async with closing as (nursery, upstreams):
        request = await trio_websocket.wrap_server_stream(
            nursery, exchange.take_over(), max_message_size=settings.max_body_bytes
        )
        client = await request.accept()
        try:
            first = await client.get_message()
            candidates = _candidates(first, client_info, table, support, affinity, outcome)
            upstream = await _connect(
                upstreams, candidates, client_info, support, settings, outcome
            )
        except trio_websocket.ConnectionClosed:
            outcome.failure = "the client closed before its first message"
            return
        except SopyError as error:
            # A backend's failure is told in the gateway's words; the log line has its cause.
            outcome.status, outcome.failure = error.status, outcome.failure or error.message
            await _send_error(client, error)
            return
        remember = _remembering(affinity, outcome, client_info.key_id, response_ended)
        screen = None if client_info.screen_model is None else _screening(client_info.screen_model)
        try:
            await upstream.send_message(first)
            async with trio.open_nursery() as pumps:
                pumps.start_soon(_pump, client, upstream, screen, pumps.cancel_scope)
                pumps.start_soon(_pump, upstream, client, remember, pumps.cancel_scope)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(settings.send_timeout):
                await client.aclose()


@contextlib.asynccontextmanager
async def _closed_within(
    seconds: float, request_id: str
) -> AsyncIterator[tuple[trio.Nursery, contextlib.AsyncExitStack]]:
    """A nursery for the client connection's tasks and a stack for the backend connection: once
    the relay is over, what is left to close (either side's close handshake, a reader task
    blocked on its full message queue) gets `seconds`, then is cancelled."""
    with trio.CancelScope() as closing:
        try:
            async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as upstreams:
                try:
                    yield nursery, upstreams
                finally:
                    closing.deadline = trio.current_time() + seconds
        except* trio_websocket.DisconnectionTimeout:
            log.info("request %s: the backend did not close its WebSocket in time", request_id)


async def _connect(
    upstreams: contextlib.AsyncExitStack,
    candidates: list[tuple[ProviderRoute, str]],
    client_info: WebsocketClient,
    support: WebsocketSupport,
    settings: Settings,
    outcome: WebsocketOutcome,
) -> trio_websocket.WebSocketConnection:
    """Connect to the first candidate backend that accepts the mode; it stays open as long as
    `upstreams`. Raise what the client is told if none does."""
    failure: SopyError | None = None
    for route, backend in candidates:
        outcome.provider, outcome.backend = route.provider, backend
        # Backend URLs are base URLs (`https://api.openai.com/v1`): the mode lives below them.
        url = "ws" + backend.removeprefix("http") + "/responses"
        try:
            return await upstreams.enter_async_context(
                trio_websocket.open_websocket_url(
                    url,
                    extra_headers=_upstream_headers(route, client_info),
                    max_message_size=settings.max_response_bytes,
                    connect_timeout=settings.connect_timeout,
                    disconnect_timeout=settings.send_timeout,
                )
            )
        except trio_websocket.ConnectionRejected as refused:
            if not _refuses_the_mode(refused.status_code):
                outcome.failure = (
                    f"backend {backend} answered {refused.status_code} to a WebSocket upgrade"
                )
                failure = UpstreamError(
                    f"Provider '{route.provider}' could not take a WebSocket connection now; "
                    f"retry, or use POST /v1/responses (request id {client_info.request_id})."
                )
                continue
            log.info(
                "backend %s of provider '%s' refused the WebSocket mode (%s); not trying it again",
                backend,
                route.provider,
                refused.status_code,
            )
            support.mark_refused(backend)
        except trio_websocket.ConnectionTimeout:
            outcome.failure = (
                f"backend {backend} did not accept a WebSocket connection within "
                f"{settings.connect_timeout:g} s"
            )
            failure = UpstreamTimeout(
                f"Provider '{route.provider}' did not accept a WebSocket connection in time; "
                f"retry, or use POST /v1/responses (request id {client_info.request_id})."
            )
        except (OSError, trio_websocket.HandshakeError) as exc:
            cause = exc.__cause__ or exc
            outcome.failure = f"backend {backend} could not be reached over WebSocket: {cause}"
            failure = UpstreamError(
                f"Provider '{route.provider}' could not be reached over WebSocket; retry, or "
                f"use POST /v1/responses (request id {client_info.request_id})."
            )
    raise failure or UpgradeRequired(
        f"The provider of model '{outcome.model}' does not serve the Responses API's WebSocket "
        "mode; use POST /v1/responses (HTTP, with stream: true for events) instead."
    )


def _refuses_the_mode(status: int) -> bool:
    """Whether a backend's answer to an upgrade says it has no WebSocket mode (404, 405, 426...),
    rather than that it cannot take one now (429, 5xx) or refused the credential (401, 403)."""
    return not is_retryable_status(status) and status not in (401, 403)


def _candidates(
    first: str | bytes,
    client_info: WebsocketClient,
    table: RouteTable,
    support: WebsocketSupport,
    affinity: ResponseAffinity,
    outcome: WebsocketOutcome,
) -> list[tuple[ProviderRoute, str]]:
    """(route, backend) pairs to try, in order, for the first message."""
    try:
        message = orjson.loads(first)
    except orjson.JSONDecodeError:
        raise InvalidJson("The first message must be a JSON `response.create` event.") from None
    if not isinstance(message, dict) or message.get("type") != "response.create":
        raise InvalidRequest("The first message must be a `response.create` event.")
    model = message.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    outcome.model = model
    if client_info.screen_model is not None:
        client_info.screen_model(model)
    previous_id = message.get("previous_response_id")
    if previous_id is None:
        routes = table.routes_for(model)
        return [(route, url) for route in routes for url in support.usable_backends(route)]
    route = previous_response_route(previous_id, client_info.key_id, model, table, affinity)
    return [(route, url) for url in support.usable_backends(route)]


def _upstream_headers(
    route: ProviderRoute, client_info: WebsocketClient
) -> list[tuple[bytes, bytes]]:
    headers = [(name, value) for name, value in client_info.headers if name in _FORWARDED_HEADERS]
    if route.credential is not None:
        headers.append(credential_header(route.credential, PROVIDER_KINDS[route.kind]))
    return headers


def _remembering(
    affinity: ResponseAffinity,
    outcome: WebsocketOutcome,
    key_id: int | None,
    response_ended: Callable[[TokenCounts | None], None],
) -> Callable[[str | bytes], None]:
    provider, backend = outcome.provider, outcome.backend
    assert provider is not None and backend is not None

    def remember(message: str | bytes) -> None:
        # A cheap look first: most messages are deltas.
        if isinstance(message, str):
            created = '"response.created"' in message
        else:
            created = b'"response.created"' in message
        if created:
            response_id = id_of_created_event(message)
            if response_id is not None:
                affinity.remember(response_id, provider, backend, key_id)
        elif ends_a_response(message):
            whole = message.encode() if isinstance(message, str) else message
            response_ended(usage_of_body(whole))

    return remember


def _screening(screen_model: Callable[[str], None]) -> Callable[[str | bytes], None]:
    """Checks the model of each `response.create` the client sends before it is relayed."""

    def screen(message: str | bytes) -> None:
        if isinstance(message, str):
            creates = '"response.create"' in message
        else:
            creates = b'"response.create"' in message
        if not creates:
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        model = event.get("model") if isinstance(event, dict) else None
        if isinstance(model, str):
            screen_model(model)

    return screen


async def _pump(
    source: trio_websocket.WebSocketConnection,
    sink: trio_websocket.WebSocketConnection,
    watch: Callable[[str | bytes], None] | None,
    both: trio.CancelScope,
) -> None:
    """Relay messages from `source` to `sink` until either closes; then stop the other way. A
    message `watch` refuses (a `response.create` for a model the key may not use) is not
    relayed: `source` gets the error and is closed."""
    try:
        while True:
            message = await source.get_message()
            if watch is not None:
                watch(message)
            await sink.send_message(message)
    except trio_websocket.ConnectionClosed:
        both.cancel()
    except SopyError as refused:
        await _send_error(source, refused)
        both.cancel()


async def _send_error(client: trio_websocket.WebSocketConnection, error: SopyError) -> None:
    """One `error` event as the WebSocket mode sends them, then close the connection."""
    event = {"type": "error", "status": error.status, **error.openai_body()}
    try:
        await client.send_message(orjson.dumps(event).decode())
        await client.aclose(_CLOSE_NORMAL if error.status == 426 else _CLOSE_POLICY)
    except trio_websocket.ConnectionClosed:
        pass
