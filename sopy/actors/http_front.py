"""The HTTP front actor: Sopy's public, OpenAI-compatible API, served by `sopy.protocol.server`.

Which handler serves a method and path comes from the public route table
(`sopy.routing.public_routes`), the same table the OpenAPI document is generated from. It
authenticates and routes every model request from an in-memory `RouteTable` derived from the
config actor's latest snapshot (no disk and no await on the config actor on the request
path), and hands each model request to `sopy.actors.relay`, which forwards it to the provider's
upstream pool and relays the answer back as it arrives.

Every model request of a key with limits goes through the one per-key decision,
`sopy.routing.key_limits.KeyGate`, in memory and without awaiting: expiry on every
authenticated route, then the model allow-list on the provider chain handed to the relay (so on
every fallback hop too), then the rates, parallel cap and budget (`admit`); the request's
`Admission` is settled in `accounted` with the tokens the provider reported. A key without
limits costs one `None` check. Before it serves, the front asks the usage actor for the tokens
each key with a budget has used (`TokenTotalsQuery`).

The Responses API is stateful: the front remembers in `ResponseAffinity` (in memory; made
durable by `sopy.actors.response_affinity_store`) which backend made each response, for which
user key, and sends its follow-ups (`/v1/responses/{id}...`, `previous_response_id`) to that one
backend only. Its WebSocket mode is handed to `sopy.actors.websocket_relay`.

The Anthropic Messages routes are model routes too, with two differences: the key may come as
`x-api-key`, and every error is answered in Anthropic's shape, as the route table declares
(`ErrorShape`). Which providers serve a model route, natively or translated, is
`sopy.routing.native_routes`' decision; `/v1/messages/count_tokens` for a model whose first
provider does not serve Messages is answered here by a local estimate
(`sopy.translation.translate.estimate_input_tokens`).

In a worker process (`sopy serve --workers N`), `primary` is the link to the primary process
(`sopy.actors.primary_link`), and the front serves on the listening sockets it inherited
(`listeners`), taking turns with the other workers to accept (`accept_balance`). A key with
limits is admitted by the primary's one gate (one round trip; a key without limits asks
nothing), a response id this worker does not know is asked of the primary before a 404, and
`/metrics` is the whole server's. In one process all three are None.

`GET /metrics` shows the gateway's Prometheus metrics (`sopy.runtime.metrics`, recorded by
`sopy.actors.relay.accounted`), or, with `--metrics-port`, a second server on that port does,
and the public port answers 404 for it.

Request bodies are bounded twice: each by `max_body_bytes` (413), all those held at once by
`max_body_bytes_in_flight` (503 with Retry-After). A body is held from the moment it is announced
(or, chunked, as it arrives) until its request is over, as the pool may resend it to another
backend or provider.
"""

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import orjson
import trio

from sopy.actors.front_responses import send_body, send_complete, send_error, send_json
from sopy.actors.primary_link import PrimaryLink
from sopy.actors.relay import (
    ProviderInbox,
    ProxiedRequest,
    accounted,
    proxy,
    usage_record,
)
from sopy.actors.websocket_relay import (
    WebsocketClient,
    WebsocketOutcome,
    WebsocketSupport,
    relay_websocket,
)
from sopy.docs.openapi import openapi_json
from sopy.docs.page import docs_response
from sopy.errors import (
    ErrorShape,
    InternalError,
    InvalidJson,
    InvalidRequest,
    LimitStoreUnavailable,
    NoBackendAvailable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ResponseNotFound,
    ServerBusy,
    SopyError,
    StartupError,
    UpgradeRequired,
    innermost,
)
from sopy.messages import (
    ConfigChanged,
    ProviderRoute,
    TokenCounts,
    UsageRequest,
)
from sopy.protocol.errors import ProtocolError
from sopy.protocol.events import Header
from sopy.protocol.server import (
    AcceptBalance,
    ClientGone,
    HttpExchange,
    HttpServer,
    ServerLimits,
)
from sopy.provider_kinds import WireFormat
from sopy.routing.cors import CorsPolicy
from sopy.routing.kept_responses import KeptResponses, own_input_items
from sopy.routing.key_limits import (
    AdmissionHold,
    KeyGate,
    KeyPolicy,
    counted_here,
    token_estimate,
)
from sopy.routing.model_field import form_boundary, form_model
from sopy.routing.native_routes import (
    COUNT_TOKENS_PATH,
    model_routes,
    translation_for,
)
from sopy.routing.public_routes import (
    PUBLIC_ROUTES,
    PublicDispatcher,
    PublicHandler,
    public_route,
)
from sopy.routing.response_affinity import (
    ResponseAffinity,
    ResponseOwner,
    previous_response_route,
)
from sopy.routing.response_ids import ResponseIdWatcher
from sopy.routing.route_table import RouteTable
from sopy.routing.usage_counts import with_usage_requested
from sopy.runtime.byte_budget import ByteBudget, ByteShare
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sopy.runtime.metrics import UNMAPPED, GatewayMetrics
from sopy.runtime.token_totals import ask_token_totals
from sopy.runtime.usage_ledger import UsageLedger
from sopy.settings import Settings
from sopy.translation import translate

if TYPE_CHECKING:
    from sopy.routing.redis_limits import SharedLimits

log = logging.getLogger(__name__)

_HELLO_NAME_PREFIX = public_route("hello_name").prefix
_STREAMS_WITH_USAGE_OPTION = frozenset(
    public_route(name).path for name in ("create_chat_completion", "create_completion")
)
_RESPONSE_ID_PREFIX = public_route("get_response").prefix
_MODEL_PREFIX = public_route("retrieve_model").prefix
_FOLLOW_UP_ROUTE = public_route("get_response").path
_RESPONSES_ROUTE = public_route("create_response").path
_METRICS_PATH = public_route("metrics").path


Handler = Callable[[HttpExchange, bytes], Awaitable[None]]


@attrs.frozen
class ModelRoutes:
    """What differs between the API families routed by model: how the caller's key is read,
    and the shape of the errors."""

    error_shape: ErrorShape
    authenticate: Callable[[RouteTable, HttpExchange], int]


def _bearer_key(table: RouteTable, exchange: HttpExchange) -> int:
    return table.authenticate(exchange.header(b"authorization"))


def _anthropic_key(table: RouteTable, exchange: HttpExchange) -> int:
    return table.authenticate_anthropic(
        exchange.header(b"x-api-key"), exchange.header(b"authorization")
    )


OPENAI_MODEL_ROUTES = ModelRoutes(ErrorShape.OPENAI, _bearer_key)
ANTHROPIC_MODEL_ROUTES = ModelRoutes(ErrorShape.ANTHROPIC, _anthropic_key)


class HttpFront:
    def __init__(
        self,
        settings: Settings,
        feed: ChangeFeed,
        inbox_for: ProviderInbox,
        affinity: ResponseAffinity,
        kept: KeptResponses,
        usage: UsageLedger,
        usage_inbox: trio.MemorySendChannel[UsageRequest],
    ) -> None:
        self._settings = settings
        self._affinity = affinity
        self._kept = kept
        self._usage = usage
        self._usage_inbox = usage_inbox
        self._websocket_support = WebsocketSupport()
        self._feed = feed
        self._inbox_for = inbox_for
        self._bodies_in_flight = ByteBudget(settings.max_body_bytes_in_flight)
        self._draining = trio.Event()
        self._request_slots = trio.CapacityLimiter(settings.max_concurrent_requests)
        self.metrics = GatewayMetrics(per_key=settings.metrics_per_key)
        self.key_gate = KeyGate(shared_counts=settings.limits is not None)
        self._shared_limits: SharedLimits | None = None
        if settings.limits is not None:
            # Only a gateway that counts limits in Redis loads its client (13 MB at rest).
            from sopy.routing import redis_limits

            self._shared_limits = redis_limits.SharedLimits(settings.limits, self.key_gate.refusals)
        self.metrics.add_counter_source(
            "sopy_limit_refusals",
            "Requests refused by their key's limits, by reason (expired, model, budget, "
            "parallel, rpm, tpm).",
            "reason",
            self.key_gate.refusals_by_reason,
        )
        self.metrics.add_gauge(
            "sopy_requests_in_flight",
            "Requests being served now.",
            lambda: self._request_slots.borrowed_tokens,
        )
        self.metrics.add_gauge(
            "sopy_config_version",
            "Version of the configuration being served (0 while it loads).",
            lambda: 0 if feed.latest is None else feed.latest.version,
        )
        self.stopped = trio.Event()
        self.metrics_url: str | None = None  # with --metrics-port, once it listens
        # In a worker process: its link to the primary, and the public sockets it inherited.
        self.primary: PrimaryLink | None = None
        self.listeners: Sequence[trio.SocketListener] | None = None
        self.accept_balance: AcceptBalance | None = None
        self._table_source: ConfigChanged | None = None
        self._table: RouteTable | None = None
        handlers: dict[PublicHandler, Handler] = {
            PublicHandler.HELLO_WORLD: self._hello_world,
            PublicHandler.HELLO_NAME: self._hello_name,
            PublicHandler.HEALTH: self._health,
            PublicHandler.MODELS: self._models,
            PublicHandler.MODEL: self._model,
            PublicHandler.PROXY: self._proxy,
            PublicHandler.RESPONSES: self._create_response,
            PublicHandler.RESPONSE_FOLLOW_UP: self._follow_up_response,
            PublicHandler.RESPONSES_WEBSOCKET: self._responses_websocket,
            PublicHandler.ANTHROPIC_MESSAGES: functools.partial(
                self._proxy, family=ANTHROPIC_MODEL_ROUTES
            ),
            PublicHandler.OPENAPI: self._openapi,
            PublicHandler.DOCS: self._docs,
            PublicHandler.METRICS: self._metrics,
        }
        shapes = {route.handler: route.error_shape for route in PUBLIC_ROUTES}
        self._handler_for = PublicDispatcher(
            PUBLIC_ROUTES, {name: (handler, shapes[name]) for name, handler in handlers.items()}
        ).handler_for
        self._cors = CorsPolicy(settings.cors_origins) if settings.cors_origins else None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if self._settings.no_auth:
            log.warning(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach %s:%d can spend your "
                "provider credentials. Use this only for local experiments.",
                self._settings.host,
                self._settings.port,
            )
        try:
            async with trio.open_nursery() as shared_limits:
                if self._shared_limits is not None:
                    await shared_limits.start(self._shared_limits.run)
                await self._seed_budgets()
                await self._serve(task_status)
                shared_limits.cancel_scope.cancel()
        finally:
            self.stopped.set()

    async def _seed_budgets(self) -> None:
        """Before serving: the tokens each key with a `token_budget` used since its count
        began, from the usage actor's records, so a budget survives a restart."""
        latest = self._feed.latest
        if latest is None:
            return
        starts = self.key_gate.budget_starts(RouteTable.from_snapshot(latest.snapshot).key_policies)
        if not starts:
            return
        spent = await ask_token_totals(self._usage_inbox, starts)
        self.key_gate.seed_budgets(starts, spent)
        if self._shared_limits is not None:
            await self._shared_limits.seed_budgets(starts, spent)

    def stop_accepting(self) -> None:
        """Begin a graceful stop: no new connections; in-flight requests get `drain_timeout`."""
        self._draining.set()

    async def _serve(self, task_status: trio.TaskStatus[str]) -> None:
        settings = self._settings
        limits = ServerLimits(
            header_timeout=settings.header_timeout,
            drain_timeout=settings.drain_timeout,
            send_timeout=settings.send_timeout,
        )
        server = HttpServer(self._serve_request, limits, _render_error, self.accept_balance)
        async with trio.open_nursery() as nursery:
            url = await _listen(
                nursery, server, settings, settings.port, "--port", self._draining, self.listeners
            )
            log.info("serving the OpenAI API on %s", url)
            # In a worker, the primary serves --metrics-port, for every worker.
            if settings.metrics_port is not None and self.primary is None:
                metrics_server = HttpServer(self._serve_metrics_port, limits, _render_error)
                self.metrics_url = await _listen(
                    nursery, metrics_server, settings, settings.metrics_port, "--metrics-port",
                    self._draining,
                )  # fmt: skip
                log.info("serving /metrics on %s", self.metrics_url)
            task_status.started(url)

    async def _serve_metrics_port(self, exchange: HttpExchange) -> None:
        """The `--metrics-port` server: GET /metrics, and a 404 for anything else."""
        rid = os.urandom(8).hex().encode()
        if exchange.raw_path == _METRICS_PATH and exchange.method in ("GET", "HEAD"):
            await self._send_metrics(exchange, rid)
        else:
            error = NotFound(
                f"This port serves GET /metrics only, not {exchange.method} {exchange.raw_path}."
            )
            await send_error(exchange, error, ErrorShape.OPENAI, rid)

    async def _serve_request(self, exchange: HttpExchange) -> None:
        request_id = os.urandom(8).hex().encode()
        if self._cors is not None and await self._answered_cors(self._cors, exchange, request_id):
            return
        error_shape = ErrorShape.OPENAI
        try:
            # Matched as sent: `/v1/chat%2Fcompletions` is not `/v1/chat/completions`.
            handler, error_shape = self._handler_for(exchange.method, exchange.raw_path)
            try:
                self._request_slots.acquire_nowait()
            except trio.WouldBlock:
                raise ServerBusy(
                    f"the gateway is serving its limit of {self._settings.max_concurrent_requests} "
                    "requests at once; retry shortly"
                ) from None
            try:
                await handler(exchange, request_id)
            finally:
                self._request_slots.release()
        except SopyError as error:
            await send_error(exchange, error, error_shape, request_id)
        except ClientGone:
            log.debug("client went away before sending its whole request")

    @staticmethod
    async def _answered_cors(cors: CorsPolicy, exchange: HttpExchange, rid: bytes) -> bool:
        """For a browser origin that `--cors-origins` lists: answer its preflight (True), or
        have the answer carry the CORS headers. Other origins get none."""
        origin = exchange.header(b"origin")
        if not cors.allows(origin):
            return False
        assert origin is not None
        if exchange.method == "OPTIONS" and exchange.header(b"access-control-request-method"):
            requested = exchange.header(b"access-control-request-headers")
            await send_complete(exchange, 204, cors.preflight_headers(origin, requested), b"", rid)
            return True
        exchange.common_headers = cors.response_headers(origin)
        return False

    def _route_table(self) -> RouteTable:
        latest = self._feed.latest
        if latest is None:
            raise NoBackendAvailable("the configuration is still loading; retry in a moment")
        if latest is not self._table_source or self._table is None:
            self._table = RouteTable.from_snapshot(latest.snapshot)
            self._table_source = latest
        return self._table

    async def _hello_world(self, exchange: HttpExchange, rid: bytes) -> None:
        await send_json(exchange, 200, {"message": "Hello World"}, rid)

    async def _hello_name(self, exchange: HttpExchange, rid: bytes) -> None:
        name = exchange.path[len(_HELLO_NAME_PREFIX) :]
        await send_json(exchange, 200, {"message": f"Hello {name}"}, rid)

    async def _openapi(self, exchange: HttpExchange, rid: bytes) -> None:
        await send_body(exchange, 200, openapi_json(), rid)

    async def _docs(self, exchange: HttpExchange, rid: bytes) -> None:
        answer = docs_response(exchange.path)
        if answer is None:
            raise NotFound(f"no documentation at {exchange.path}; the docs page is GET /docs")
        status, content_type, body = answer
        await send_body(exchange, status, body, rid, content_type=content_type)

    async def _metrics(self, exchange: HttpExchange, rid: bytes) -> None:
        if self._settings.metrics_port is not None:
            raise NotFound(
                f"/metrics is served on its own port ({self._settings.metrics_port}, "
                "--metrics-port), not on the public one."
            )
        await self._send_metrics(exchange, rid)

    async def _send_metrics(self, exchange: HttpExchange, rid: bytes) -> None:
        if self.primary is None:
            body = self.metrics.exposition()
        else:
            body = await self.primary.whole_server_metrics()
        await send_body(exchange, 200, body, rid, content_type=METRICS_CONTENT_TYPE)

    async def _health(self, exchange: HttpExchange, rid: bytes) -> None:
        table = self._route_table()
        await send_json(exchange, 200, {"status": "ok", "config_version": table.version}, rid)

    async def _models(self, exchange: HttpExchange, rid: bytes) -> None:
        """The mapped models; for a key with a `models` allow-list, those it may use."""
        table = self._route_table()
        _, policy = self._authenticate(table, exchange)
        if policy is None or policy.models is None:
            body = table.models_body
        else:
            body = table.models_body_of(policy.models)
        await send_body(exchange, 200, body, rid)

    async def _model(self, exchange: HttpExchange, rid: bytes) -> None:
        table = self._route_table()
        _, policy = self._authenticate(table, exchange)
        allowed = None if policy is None else policy.models
        body = table.model_body(exchange.path[len(_MODEL_PREFIX) :], allowed)
        await send_body(exchange, 200, body, rid)

    def _authenticate(
        self, table: RouteTable, exchange: HttpExchange
    ) -> tuple[int | None, KeyPolicy | None]:
        """The caller's user key id (None with --no-auth) and its limits (None: it has none),
        or raise 401."""
        if self._settings.no_auth:
            return None, None
        key_id = _bearer_key(table, exchange)
        return key_id, self._key_policy(table, key_id)

    def _key_policy(self, table: RouteTable, key_id: int) -> KeyPolicy | None:
        """The key's limits, if it has any and has not expired (else 401)."""
        policy = table.key_policies.get(key_id)
        if policy is not None:
            self.key_gate.check_expiry(policy)
        return policy

    async def _admit(self, policy: KeyPolicy, estimate: int) -> AdmissionHold | None:
        """The key's decision (`KeyGate.admit`), then, with `--limits`, its counted limits
        across instances and workers (`SharedLimits.admit`, each worker straight to the limit
        store); without `--limits`, in a worker, the primary's one gate decides (None: nothing
        to settle after, as for a key limited by `rpm` alone)."""
        if self.primary is not None and self._shared_limits is None:
            return await self.primary.admit(policy.key_id, estimate)
        admission = self.key_gate.admit(policy, estimate)
        if self._shared_limits is None or not counted_here(policy):
            return admission
        try:
            admission.shared = await self._shared_limits.admit(policy, estimate)
        except LimitStoreUnavailable:
            if policy.limits.limit_failure == "open":
                return admission
            admission.finish(None, False)
            raise
        except BaseException:
            admission.finish(None, False)
            raise
        return admission

    async def _proxy(
        self,
        exchange: HttpExchange,
        rid: bytes,
        family: ModelRoutes = OPENAI_MODEL_ROUTES,
    ) -> None:
        """Authenticate, read the body, route it by its `model` and relay the answer."""
        # A PROXY route is an exact path, so the path matched is its template.
        request = ProxiedRequest(rid, exchange.raw_path, family.error_shape)
        with accounted(request, exchange, self.metrics, self._usage):
            table = self._route_table()
            policy = None
            if not self._settings.no_auth:
                request.key_id = family.authenticate(table, exchange)
                policy = self._key_policy(table, request.key_id)
            with self._bodies_in_flight.share() as body_share:
                body = await _read_body(exchange, self._settings, body_share)
                request.model, request.payload = _requested_model(body, exchange, request)
                if _needs_usage_option(exchange.raw_path, request.payload):
                    body = with_usage_requested(body)
                    request.strip_usage_chunk = True
                routes = model_routes(table, request.model, request.route)
                request.model_mapped = True
                if policy is not None:
                    routes = self.key_gate.allowed_routes(policy, request.model, routes)
                if request.route == COUNT_TOKENS_PATH and translation_for(
                    routes[0].kind, COUNT_TOKENS_PATH
                ):
                    # A local estimate: no provider is asked, so no limit is spent.
                    await _estimate_tokens(exchange, request)
                    return
                if policy is not None:
                    request.admission = await self._admit(
                        policy, token_estimate(body, request.payload)
                    )
                await proxy(self._inbox_for, routes, request, exchange, body)

    async def _create_response(self, exchange: HttpExchange, rid: bytes) -> None:
        """POST /v1/responses: by model, or with `previous_response_id` to the backend that
        made that response; the id of the response made is remembered for its follow-ups.
        A response made by a provider that does not serve the Responses API is kept by Sopy
        itself (`KeptResponses`), and a request continuing one carries the whole conversation
        to whichever provider serves it."""
        request = ProxiedRequest(rid, _RESPONSES_ROUTE)
        with accounted(request, exchange, self.metrics, self._usage):
            table = self._route_table()
            request.key_id, policy = self._authenticate(table, exchange)
            with self._bodies_in_flight.share() as body_share:
                body = await _read_body(exchange, self._settings, body_share)
                payload = request.payload = _request_payload(body)
                request.model = _model_of(payload)
                previous_id = payload.get("previous_response_id")
                if self.primary is not None and isinstance(previous_id, str):
                    await self._recall(previous_id, request.key_id)
                continued = self._kept.continued(payload, request.key_id)
                previous_id_kept = None
                if continued is not None:
                    whole, own_input = continued
                    assert isinstance(previous_id, str)
                    previous_id_kept = previous_id
                    body = orjson.dumps(whole)
                    # Translated, the answer still names the response it continues.
                    request.payload = {**whole, "previous_response_id": previous_id}
                    previous_id = None
                else:
                    own_input = None
                if previous_id is None:
                    routes = model_routes(table, request.model, _RESPONSES_ROUTE)
                    request.model_mapped = True
                else:
                    routes = (
                        previous_response_route(
                            previous_id, request.key_id, request.model, table, self._affinity
                        ),
                    )
                if policy is not None:
                    routes = self.key_gate.allowed_routes(policy, request.model, routes)
                    request.admission = await self._admit(policy, token_estimate(body, payload))
                request.response_ids = ResponseIdWatcher(self._remembering(request))
                await proxy(self._inbox_for, routes, request, exchange, body)
                kept = request.kept_response
                if kept is not None and translate.kept(payload):
                    self._kept.keep(
                        kept["id"],
                        request.key_id,
                        previous_id_kept,
                        own_input if own_input is not None else own_input_items(payload),
                        orjson.dumps(kept),
                    )

    async def _recall(self, response_id: str, key_id: int | None) -> None:
        """In a worker: a response made through another worker that this one does not know
        yet (where it lives, or the response Sopy keeps), learnt from the primary."""
        assert self.primary is not None
        if response_id not in self._kept and self._affinity.owner_for(response_id, key_id) is None:
            await self.primary.recall(response_id)

    def _remembering(self, request: ProxiedRequest) -> Callable[[str], None]:
        def remember(response_id: str) -> None:
            assert request.provider is not None and request.backend is not None
            self._affinity.remember(response_id, request.provider, request.backend, request.key_id)

        return remember

    async def _follow_up_response(self, exchange: HttpExchange, rid: bytes) -> None:
        """GET/DELETE /v1/responses/{id}, its cancel and input_items: to the backend that made
        the response, for the key that made it only."""
        response_id, slash, action = exchange.raw_path[len(_RESPONSE_ID_PREFIX) :].partition("/")
        # The dispatcher matched one of the follow-up templates, so `action` is one of theirs.
        request = ProxiedRequest(rid, _FOLLOW_UP_ROUTE + slash + action)
        with accounted(request, exchange, self.metrics, self._usage):
            table = self._route_table()
            request.key_id, _ = self._authenticate(table, exchange)
            if self.primary is not None:
                await self._recall(response_id, request.key_id)
            if response_id in self._kept:
                await self._answer_kept(exchange, request, response_id, action)
                return
            owner = self._affinity.owner_for(response_id, request.key_id)
            if owner is None:
                raise _response_not_found(response_id)
            route = _pinned(table, owner, response_id)
            with self._bodies_in_flight.share() as body_share:
                body = await _read_body(exchange, self._settings, body_share)
                await proxy(self._inbox_for, (route,), request, exchange, body)
            if exchange.method == "DELETE" and request.status == 200:
                self._affinity.forget(response_id)

    async def _answer_kept(
        self, exchange: HttpExchange, request: ProxiedRequest, response_id: str, action: str
    ) -> None:
        """A follow-up of a response Sopy keeps itself, answered from what it keeps."""
        kept = self._kept.get(response_id, request.key_id)
        if kept is None:
            raise _response_not_found(response_id)
        if action == "input_items":
            listing = self._kept.input_items(response_id, request.key_id)
            assert listing is not None
            answer: bytes | dict[str, object] = listing
        elif action == "cancel":
            raise InvalidRequest(
                f"Response '{response_id}' is complete: only a response still being made in "
                "the background can be cancelled."
            )
        elif exchange.method == "DELETE":
            self._kept.forget(response_id)
            answer = {"id": response_id, "object": "response.deleted", "deleted": True}
        else:
            answer = kept.response
        request.status = 200
        if isinstance(answer, bytes):
            await send_body(exchange, 200, answer, request.rid)
        else:
            await send_json(exchange, 200, answer, request.rid)

    async def _responses_websocket(self, exchange: HttpExchange, rid: bytes) -> None:
        """GET /v1/responses with `Upgrade: websocket`: the WebSocket mode, relayed to a
        backend's own (`sopy.actors.websocket_relay`), or a 426 before upgrading."""
        request = ProxiedRequest(rid, f"{_RESPONSES_ROUTE} (websocket)")
        outcome = WebsocketOutcome()
        # Not the connection but each response made over it is a model request to record.
        with accounted(request, exchange, self.metrics, None):
            table = self._route_table()
            request.key_id, policy = self._authenticate(table, exchange)
            upgrade = exchange.header(b"upgrade")
            if upgrade is None or upgrade.lower() != b"websocket":
                raise UpgradeRequired(
                    "GET /v1/responses is the Responses API's WebSocket mode: send "
                    "'Upgrade: websocket', or create a response with POST /v1/responses."
                )
            self._websocket_support.check_any_usable(table.providers)
            screen_model = None
            if policy is not None:
                # The connection is one request; each response's tokens count as it ends.
                request.admission = await self._admit(policy, 0)
                screen_model = functools.partial(self.key_gate.check_model, policy)
            client = WebsocketClient(
                request.key_id, rid.decode(), tuple(exchange.headers), screen_model
            )
            await relay_websocket(
                exchange,
                client,
                table,
                self._websocket_support,
                self._affinity,
                self._settings,
                outcome,
                self._recording_responses(request, outcome),
            )
            request.model, request.status, request.failure = (
                outcome.model,
                outcome.status,
                outcome.failure,
            )
            request.provider, request.backend = outcome.provider, outcome.backend

    def _recording_responses(
        self, request: ProxiedRequest, outcome: WebsocketOutcome
    ) -> Callable[[TokenCounts | None], None]:
        """Records each response of a WebSocket-mode connection as it ends, under the
        connection's request id."""

        def record(tokens: TokenCounts | None) -> None:
            assert outcome.provider is not None
            request.model, request.backend, request.status = outcome.model, outcome.backend, 200
            request.tokens = tokens
            self._usage.record(usage_record(request, outcome.provider))
            if tokens is not None:
                self.metrics.record_tokens(UNMAPPED, outcome.provider, tokens)
                if request.admission is not None:
                    request.admission.record(tokens)

        return record


async def _listen(
    nursery: trio.Nursery,
    server: HttpServer,
    settings: Settings,
    port: int,
    flag: str,
    draining: trio.Event,
    listeners: Sequence[trio.SocketListener] | None = None,
) -> str:
    """Start `server` on `port` of `--host` (or on `listeners`); its URL, or a StartupError that
    says what to do."""
    try:
        url: str = await nursery.start(
            functools.partial(server.serve, listeners=listeners),
            settings.host,
            port,
            draining.wait,
        )
    except* OSError as failures:
        first = innermost(failures)
        reason = first.strerror if isinstance(first, OSError) else None
        raise StartupError(
            f"cannot listen on {settings.host}:{port}: {reason or first}; stop whatever uses "
            f"that port or pass {flag}"
        ) from None
    return url


async def _estimate_tokens(exchange: HttpExchange, request: ProxiedRequest) -> None:
    """`/v1/messages/count_tokens` for a provider that does not serve Messages: Sopy's own
    estimate, in Anthropic's shape."""
    assert request.payload is not None
    # A count_tokens body is a Messages request without `max_tokens`, which does not count.
    counted = {**request.payload, "max_tokens": 1}
    conversation = translate.client_conversation(WireFormat.MESSAGES, counted)
    request.status = 200
    count = {"input_tokens": translate.estimate_input_tokens(conversation)}
    await send_json(exchange, 200, count, request.rid)


def _pinned(table: RouteTable, owner: ResponseOwner, rid: str) -> ProviderRoute:
    route = table.pinned_route(owner.provider, owner.backend, None)
    if route is None:
        raise ResponseNotFound(
            f"Response with id '{rid}' is stored on a backend of provider '{owner.provider}' "
            "that is no longer in the gateway's configuration, so it cannot be reached."
        )
    return route


def _response_not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(
        f"Response with id '{response_id}' not found. Only responses made with this API key "
        "through this gateway can be reached, until they expire or are deleted."
    )


def _render_error(status: int, message: str) -> tuple[list[Header], bytes]:
    """The OpenAI-shaped answer to a request the HTTP server refused by itself."""
    error = InternalError(message) if status == 500 else InvalidRequest(message)
    return [(b"content-type", b"application/json")], orjson.dumps(error.openai_body())


def _needs_usage_option(path: str, payload: dict[str, object] | None) -> bool:
    """Whether Sopy must ask for a stream's usage chunk itself: a chat or completions stream
    whose client did not set `stream_options` (one that sets it without `include_usage` is
    counted as not reported rather than having its options rewritten)."""
    return (
        payload is not None
        and path in _STREAMS_WITH_USAGE_OPTION
        and payload.get("stream") is True
        and "stream_options" not in payload
    )


def _requested_model(
    body: bytes, exchange: HttpExchange, request: ProxiedRequest
) -> tuple[str, dict[str, object] | None]:
    """The model a JSON body asks for (and the body's object), or, failing JSON, a
    multipart/form-data body's `model` field (whose span `request` keeps, for a provider that
    knows the model by another name)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        boundary = form_boundary(exchange.header(b"content-type"))
        if boundary is None:
            raise InvalidJson(
                "We could not parse the JSON body of your request. Send a JSON object with "
                "'Content-Type: application/json' (or, to upload a file, a multipart/form-data "
                "body with a 'model' field)."
            ) from None
        return _form_model(body, boundary, request), None
    fields = _json_object(payload)
    return _model_of(fields), fields


def _request_payload(body: bytes) -> dict[str, object]:
    """The JSON object of a route that takes JSON only."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJson(
            "We could not parse the JSON body of your request. Send a JSON object with "
            "'Content-Type: application/json'."
        ) from None
    return _json_object(payload)


def _json_object(payload: object) -> dict[str, object]:
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload


def _model_of(payload: dict[str, object]) -> str:
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


def _form_model(body: bytes, boundary: bytes, request: ProxiedRequest) -> str:
    model, span = form_model(body, boundary)
    if span is None:
        raise InvalidRequest(
            "You must provide a model parameter: add a 'model' field to the form.", param="model"
        )
    if not model:
        raise InvalidRequest(
            "The form's 'model' field must be non-empty UTF-8 text.", param="model"
        )
    request.form_model_span = span
    return model


async def _read_body(exchange: HttpExchange, settings: Settings, share: ByteShare) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to be too large, with a 503 as
    soon as `share` cannot hold it, and with a 408 if the client takes longer than
    `body_timeout` to send it."""
    limit = settings.max_body_bytes
    declared = exchange.header(b"content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        # Before the body is read (and before `100 Continue`): refused, it is never sent.
        _hold(share, length, settings)
    # Most bodies arrive in one piece, kept as it came; a longer one grows in one buffer, as a
    # list of pieces (each of them a separate allocation) joined at the end held the body twice.
    first = b""
    grown: bytearray | None = None
    size = 0
    with trio.move_on_after(settings.body_timeout):
        while True:
            try:
                chunk = await exchange.read_body_chunk()
            except ProtocolError as exc:
                raise InvalidRequest(f"The request body is malformed: {exc}.") from None
            if chunk is None:
                return first if grown is None else bytes(grown)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if length is None:
                _hold(share, len(chunk), settings)
            if grown is not None:
                grown += chunk
            elif first:
                grown, first = bytearray(first), b""
                grown += chunk
            else:
                first = chunk
    raise RequestTimeout(
        f"The request body did not arrive within {settings.body_timeout:g} s; send it faster "
        "or in one piece."
    )


def _hold(share: ByteShare, size: int, settings: Settings) -> None:
    if not share.try_take(size):
        raise ServerBusy(
            "The gateway is holding its limit of "
            f"{settings.max_body_bytes_in_flight} bytes of request bodies in flight "
            "(--max-body-bytes-in-flight); retry in a moment."
        )


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")
