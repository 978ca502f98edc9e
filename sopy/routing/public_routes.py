"""The public API's routes: which method and path is which handler, and what each can answer.

This table is the only place the API on the public TCP port is declared. The HTTP front
dispatches with a `PublicDispatcher` built from it, mapping each `PublicHandler` to one of its
methods, and `sopy.docs.openapi` generates the public half of the OpenAPI document from it: each
route's error responses come from the `sopy.errors` classes it names (status, code and
docstring), and the limits they quote from the `Settings` field in `ERROR_LIMITS`. A route is
therefore either served and documented, or neither. Adding one is adding one `PublicRoute`; a
model route forwarded to the providers names `PublicHandler.PROXY`, its request body schema and
`MODEL_REQUEST_ERRORS`. A route declares the `ErrorShape` of its errors too: the Anthropic
Messages routes answer in Anthropic's.
"""

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

import attrs

from sopy.errors import (
    AuthenticationFailed,
    ErrorShape,
    InsufficientQuota,
    InvalidJson,
    InvalidRequest,
    KeyExpired,
    KeyRateLimited,
    MethodNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    NoBackendAvailable,
    NotFound,
    PayloadTooLarge,
    PreviousResponseNotFound,
    ProviderKindMismatch,
    RequestTimeout,
    ResponseNotFound,
    ServerBusy,
    SopyError,
    UpgradeRequired,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"
FORM = "multipart/form-data"
AUDIO = "audio/*"
PROMETHEUS_TEXT = "text/plain"

# Every request passes the front's concurrency limit before its handler runs.
FRONT_ERRORS: tuple[type[SopyError], ...] = (ServerBusy,)

# A user key's limits (`sopy.routing.key_limits`), on every request for a model.
KEY_LIMIT_ERRORS: tuple[type[SopyError], ...] = (
    ModelNotAllowed,
    KeyRateLimited,
    InsufficientQuota,
)

# What a request forwarded to a provider can fail with, from reading its body to the upstream.
MODEL_REQUEST_ERRORS: tuple[type[SopyError], ...] = (
    *KEY_LIMIT_ERRORS,
    InvalidJson,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    ProviderKindMismatch,
    RequestTimeout,
    UpstreamError,
    UpstreamResponseTooLarge,
    UpstreamRateLimited,
    NoBackendAvailable,
    UpstreamTimeout,
)

# A follow-up on a stored response goes where the response was made, or nowhere; it names no
# model and counts against no limit.
RESPONSE_FOLLOW_UP_ERRORS: tuple[type[SopyError], ...] = (
    ResponseNotFound,
    *(
        error
        for error in MODEL_REQUEST_ERRORS
        if error is not ModelNotFound and error not in KEY_LIMIT_ERRORS
    ),
)

_FOLLOW_UP = (
    "Sent to the very backend that made the response (Sopy remembers it for "
    "`--response-affinity-ttl`), with the provider's credential; only the user key that "
    "created the response reaches it, any other gets the same 404 as for an unknown id. "
)

# The `Settings` field whose value bounds each error the front answers with.
ERROR_LIMITS: Mapping[type[SopyError], str] = {
    PayloadTooLarge: "max_body_bytes",
    RequestTimeout: "body_timeout",
    ServerBusy: "max_concurrent_requests",
}

_PARAMETER = re.compile(r"\{(\w+)\}")


class PublicHandler(enum.Enum):
    """What serves a route; the HTTP front maps every member to one of its methods."""

    HELLO_WORLD = enum.auto()
    HELLO_NAME = enum.auto()
    HEALTH = enum.auto()
    MODELS = enum.auto()
    MODEL = enum.auto()
    PROXY = enum.auto()
    RESPONSES = enum.auto()
    RESPONSE_FOLLOW_UP = enum.auto()
    RESPONSES_WEBSOCKET = enum.auto()
    ANTHROPIC_MESSAGES = enum.auto()
    OPENAPI = enum.auto()
    DOCS = enum.auto()
    METRICS = enum.auto()


@attrs.frozen
class Reply:
    """A route's success answer: `content` names a component schema per media type, or None
    for a body that is just text (a page)."""

    description: str
    content: Mapping[str, str | None]
    status: int = 200


@attrs.frozen(kw_only=True)
class PublicRoute:
    """`path` is an OpenAPI template: a `{parameter}` is one path segment, except that a
    parameter ending the template takes the rest of the path (so names may contain '/') unless
    `last_parameter_takes_rest` is False (an id, which has sub-routes of its own).
    `includes_subpaths` makes the route answer every path under its own as well."""

    method: str
    path: str
    handler: PublicHandler
    operation_id: str
    tag: str
    summary: str
    reply: Reply
    description: str | None = None
    needs_key: bool = False
    request_body: str | None = None
    request_media_type: str = JSON
    errors: tuple[type[SopyError], ...] = ()
    includes_subpaths: bool = False
    last_parameter_takes_rest: bool = True
    # OpenAPI links from the success answer: operation id -> its parameters, as expressions.
    links: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    error_shape: ErrorShape = ErrorShape.OPENAI

    @property
    def path_parameters(self) -> list[str]:
        return _PARAMETER.findall(self.path)

    @property
    def prefix(self) -> str:
        """The literal start of the path, up to its first parameter."""
        return self.path.split("{", 1)[0]

    @property
    def is_exact(self) -> bool:
        return not self.path_parameters and not self.includes_subpaths

    @property
    def answers(self) -> tuple[type[SopyError], ...]:
        """Every error the route can answer with: its own, a 401 if it needs a key, and the
        front's."""
        keyed: tuple[type[SopyError], ...] = (
            (AuthenticationFailed, KeyExpired) if self.needs_key else ()
        )
        return tuple(dict.fromkeys((*keyed, *self.errors, *FRONT_ERRORS)))

    def pattern(self) -> "re.Pattern[str]":
        """The regular expression of the paths this route answers."""
        pieces = _PARAMETER.split(self.path)
        regex = ""
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                regex += re.escape(piece)
            elif index == len(pieces) - 2 and not pieces[-1] and self.last_parameter_takes_rest:
                regex += ".+"
            else:
                regex += "[^/]+"
        if self.includes_subpaths:
            regex += "(?:/.*)?"
        return re.compile(regex)


def _model_route(
    path: str,
    operation_id: str,
    summary: str,
    reply: Mapping[str, str | None],
    request_body: str,
    media_type: str = JSON,
) -> PublicRoute:
    """A route passed through to the provider of the model its body names."""
    where = "the `model` field of the multipart/form-data body" if media_type == FORM else "`model`"
    return PublicRoute(
        method="POST",
        path=path,
        handler=PublicHandler.PROXY,
        operation_id=operation_id,
        tag="openai",
        summary=summary,
        description=f"Routed by {where} and passed through to a backend of the model's "
        "provider as the client sent it (only a provider that knows the model by another name "
        "gets its name instead), with the provider's credential instead of the client's key. "
        "The answer is relayed as it arrives, streamed ones included.",
        reply=Reply("The provider's answer, unchanged.", reply),
        needs_key=True,
        request_body=request_body,
        request_media_type=media_type,
        errors=MODEL_REQUEST_ERRORS,
    )


PUBLIC_ROUTES: tuple[PublicRoute, ...] = (
    PublicRoute(
        method="GET",
        path="/",
        handler=PublicHandler.HELLO_WORLD,
        operation_id="hello_world",
        tag="gateway",
        summary="Say hello",
        reply=Reply("A greeting.", {JSON: "Message"}),
    ),
    PublicRoute(
        method="GET",
        path="/hello/{name}",
        handler=PublicHandler.HELLO_NAME,
        operation_id="hello_name",
        tag="gateway",
        summary="Say hello to someone",
        reply=Reply("`Hello {name}`.", {JSON: "Message"}),
    ),
    PublicRoute(
        method="GET",
        path="/healthz",
        handler=PublicHandler.HEALTH,
        operation_id="health",
        tag="gateway",
        summary="Check that the gateway is up",
        description="Needs no key. `config_version` is the version of the live configuration.",
        reply=Reply("The gateway is serving.", {JSON: "Health"}),
        errors=(NoBackendAvailable,),
    ),
    PublicRoute(
        method="GET",
        path="/v1/models",
        handler=PublicHandler.MODELS,
        operation_id="list_models",
        tag="openai",
        summary="List the mapped models",
        description="Every mapped model, with its provider as `owned_by`.",
        reply=Reply("The mapped models.", {JSON: "ModelList"}),
        needs_key=True,
        errors=(NoBackendAvailable,),
    ),
    PublicRoute(
        method="POST",
        path="/v1/chat/completions",
        handler=PublicHandler.PROXY,
        operation_id="create_chat_completion",
        tag="openai",
        summary="Create a chat completion",
        description="Forwarded byte for byte to a backend of the model's provider, with the "
        "provider's credential instead of the client's key. With `stream: true` the reply is "
        "relayed as server-sent events chunk by chunk; if the backend breaks off mid-stream, a "
        'final `data: {"error": ...}` event ends the stream. Upstream statuses and error '
        "bodies (429 with `Retry-After`, 5xx...) are relayed unchanged. For a provider of "
        "kind `anthropic` the request is translated to a message and its answer, stream and "
        "errors back to chat's.",
        reply=Reply(
            "The completion, or with `stream: true` its chunks as server-sent events.",
            {JSON: "ChatCompletion", EVENT_STREAM: "ServerSentEvent"},
        ),
        needs_key=True,
        request_body="ChatCompletionRequest",
        errors=MODEL_REQUEST_ERRORS,
    ),
    PublicRoute(
        method="POST",
        path="/v1/responses",
        handler=PublicHandler.RESPONSES,
        operation_id="create_response",
        tag="openai",
        summary="Create a model response (Responses API)",
        description="Forwarded byte for byte to a backend of the model's provider, relayed as "
        "it arrives (`stream: true`: server-sent events). Sopy remembers which backend made "
        "each response, so its follow-ups below and a later request naming it as "
        "`previous_response_id` reach that backend (another key's or an unknown id: 404 "
        "`previous_response_not_found`). For a provider of kind `openai-chat` or `anthropic` "
        "the request is translated (to a chat completion, or a message) and its answer, events "
        "and errors back to the Responses API's; `previous_response_id` is then a 400.",
        reply=Reply(
            "The response, or with `stream: true` its events as server-sent events.",
            {JSON: "Response", EVENT_STREAM: "ServerSentEvent"},
        ),
        needs_key=True,
        request_body="ResponseRequest",
        errors=(*MODEL_REQUEST_ERRORS, PreviousResponseNotFound),
        links={
            operation: {"response_id": "$response.body#/id"}
            for operation in (
                "get_response",
                "list_response_input_items",
                "cancel_response",
                "delete_response",
            )
        },
    ),
    PublicRoute(
        method="GET",
        path="/v1/responses",
        handler=PublicHandler.RESPONSES_WEBSOCKET,
        operation_id="responses_websocket",
        tag="openai",
        summary="Responses API WebSocket mode (Upgrade: websocket)",
        description="Codex's transport: upgrade to a websocket, then send `response.create` "
        "messages and receive the Responses events, one JSON message each, relayed to a "
        "backend's own WebSocket mode (chosen by the first message's `model` or "
        "`previous_response_id`). If no provider serves the mode, the upgrade is answered at "
        "once with 426, so clients fall back to POST /v1/responses; after the upgrade, a "
        "failure is one `error` event, then the connection closes.",
        reply=Reply("Switching to the WebSocket protocol.", {}, status=101),
        needs_key=True,
        errors=(UpgradeRequired, NoBackendAvailable, *KEY_LIMIT_ERRORS),
    ),
    PublicRoute(
        method="GET",
        path="/v1/responses/{response_id}",
        last_parameter_takes_rest=False,
        handler=PublicHandler.RESPONSE_FOLLOW_UP,
        operation_id="get_response",
        tag="openai",
        summary="Retrieve a stored response",
        description=_FOLLOW_UP,
        reply=Reply("The response, as its backend returns it.", {JSON: "Response"}),
        needs_key=True,
        errors=RESPONSE_FOLLOW_UP_ERRORS,
    ),
    PublicRoute(
        method="POST",
        path="/v1/responses/{response_id}/cancel",
        handler=PublicHandler.RESPONSE_FOLLOW_UP,
        operation_id="cancel_response",
        tag="openai",
        summary="Cancel a background response",
        description=_FOLLOW_UP,
        reply=Reply("The response, as its backend returns it.", {JSON: "Response"}),
        needs_key=True,
        errors=RESPONSE_FOLLOW_UP_ERRORS,
    ),
    PublicRoute(
        method="GET",
        path="/v1/responses/{response_id}/input_items",
        handler=PublicHandler.RESPONSE_FOLLOW_UP,
        operation_id="list_response_input_items",
        tag="openai",
        summary="List a stored response's input items",
        description=_FOLLOW_UP + "The query string (`limit`, `order`, `after`...) is passed on.",
        reply=Reply("A page of input items, as its backend returns it.", {JSON: "Response"}),
        needs_key=True,
        errors=RESPONSE_FOLLOW_UP_ERRORS,
    ),
    PublicRoute(
        method="DELETE",
        path="/v1/responses/{response_id}",
        last_parameter_takes_rest=False,
        handler=PublicHandler.RESPONSE_FOLLOW_UP,
        operation_id="delete_response",
        tag="openai",
        summary="Delete a stored response",
        description=_FOLLOW_UP + "Once the backend confirms, Sopy forgets the id.",
        reply=Reply("The deletion, as its backend confirms it.", {JSON: "Response"}),
        needs_key=True,
        errors=RESPONSE_FOLLOW_UP_ERRORS,
    ),
    PublicRoute(
        method="POST",
        path="/v1/messages",
        handler=PublicHandler.ANTHROPIC_MESSAGES,
        operation_id="create_message",
        tag="anthropic",
        summary="Create a message (Anthropic Messages API)",
        description="For Claude Code and the `anthropic` SDK (whose base URL is the gateway's "
        "origin, without `/v1`). The Sopy key goes in `x-api-key` or `Authorization: Bearer`. "
        "Forwarded byte for byte to a provider of kind `anthropic`, with the provider's "
        "credential; translated to a chat completion for a provider of another kind (and its "
        "answer back to a message), each fallback in the mapping's order. With `stream: true` "
        "the reply comes as Anthropic's server-sent events as they arrive; if the backend "
        "breaks off mid-stream, a final `event: error` ends the stream. Errors are in "
        "Anthropic's shape; a feature the provider's format cannot express is a 400 naming the "
        "field.",
        reply=Reply(
            "The message, or with `stream: true` Anthropic's stream events.",
            {JSON: "AnthropicMessage", EVENT_STREAM: "ServerSentEvent"},
        ),
        needs_key=True,
        request_body="AnthropicMessageRequest",
        errors=MODEL_REQUEST_ERRORS,
        error_shape=ErrorShape.ANTHROPIC,
    ),
    PublicRoute(
        method="POST",
        path="/v1/messages/count_tokens",
        handler=PublicHandler.ANTHROPIC_MESSAGES,
        operation_id="count_message_tokens",
        tag="anthropic",
        summary="Count a message's input tokens (Anthropic Messages API)",
        description="Routed and authenticated like `POST /v1/messages`; answered by the "
        "model's first provider if it is of kind `anthropic`, otherwise by Sopy's own estimate "
        "(UTF-8 bytes of the text, tool calls, results and definitions / 4, rounded up, plus 4 "
        "per message and 1600 per image).",
        reply=Reply("The number of input tokens.", {JSON: "AnthropicTokenCount"}),
        needs_key=True,
        request_body="AnthropicTokenCountRequest",
        errors=MODEL_REQUEST_ERRORS,
        error_shape=ErrorShape.ANTHROPIC,
    ),
    PublicRoute(
        method="GET",
        path="/v1/models/{model}",
        handler=PublicHandler.MODEL,
        operation_id="retrieve_model",
        tag="openai",
        summary="Get a mapped model",
        description="The model object of a mapped model, as in the list. A model name may "
        "contain '/'.",
        reply=Reply("The model.", {JSON: "Model"}),
        needs_key=True,
        errors=(ModelNotFound, NoBackendAvailable),
    ),
    *(
        _model_route(*entry)
        for entry in (
            (
                "/v1/completions",
                "create_completion",
                "Create a legacy text completion",
                {JSON: "PassedThrough", EVENT_STREAM: "ServerSentEvent"},
                "CompletionRequest",
            ),
            (
                "/v1/embeddings",
                "create_embedding",
                "Create embeddings",
                {JSON: "PassedThrough"},
                "EmbeddingRequest",
            ),
            (
                "/v1/moderations",
                "create_moderation",
                "Classify text",
                {JSON: "PassedThrough"},
                "ModerationRequest",
            ),
            (
                "/v1/images/generations",
                "create_image",
                "Generate images",
                {JSON: "PassedThrough"},
                "ImageRequest",
            ),
            (
                "/v1/images/edits",
                "edit_image",
                "Edit images",
                {JSON: "PassedThrough"},
                "ImageEditRequest",
                FORM,
            ),
            (
                "/v1/audio/transcriptions",
                "create_transcription",
                "Transcribe audio",
                {JSON: "PassedThrough", EVENT_STREAM: "ServerSentEvent"},
                "AudioUploadRequest",
                FORM,
            ),
            (
                "/v1/audio/translations",
                "create_translation",
                "Translate audio into English",
                {JSON: "PassedThrough"},
                "AudioUploadRequest",
                FORM,
            ),
            ("/v1/audio/speech", "create_speech", "Speak text", {AUDIO: None}, "SpeechRequest"),
            (
                "/v1/responses/input_tokens",
                "count_response_input_tokens",
                "Count a response's input tokens",
                {JSON: "PassedThrough"},
                "ResponseInputRequest",
            ),
            (
                "/v1/responses/compact",
                "compact_response",
                "Compact a conversation",
                {JSON: "PassedThrough"},
                "ResponseInputRequest",
            ),
        )
    ),
    PublicRoute(
        method="GET",
        path="/openapi.json",
        handler=PublicHandler.OPENAPI,
        operation_id="openapi_document",
        tag="docs",
        summary="This OpenAPI document",
        reply=Reply("The OpenAPI 3.1 document.", {JSON: "OpenAPIDocument"}),
    ),
    PublicRoute(
        method="GET",
        path="/docs",
        handler=PublicHandler.DOCS,
        operation_id="docs_page",
        tag="docs",
        summary="Interactive documentation",
        description="Swagger UI for this document; its assets are served by Sopy itself "
        "under `/docs/assets/`, so the page works offline.",
        reply=Reply("The HTML page.", {HTML: None}),
        errors=(NotFound,),
        includes_subpaths=True,
    ),
    PublicRoute(
        method="GET",
        path="/metrics",
        handler=PublicHandler.METRICS,
        operation_id="metrics",
        tag="gateway",
        summary="Prometheus metrics",
        description="Needs no key. Requests by route, model, provider and status; latency "
        "histograms (total, upstream, time to first token); retries; `sopy_overhead_seconds`, "
        "the time Sopy itself adds per request; backend cooldowns; requests in flight, the "
        "config version and `/admin/events` subscribers. "
        "Labels carry no key or client text (a model that is not mapped is `-`); key ids only "
        "with `--metrics-per-key`. With `--metrics-port` it is served on that port instead, "
        "and this one answers 404.",
        reply=Reply("The metrics in Prometheus' text format.", {PROMETHEUS_TEXT: None}),
        errors=(NotFound,),
    ),
)


def public_route(operation_id: str) -> PublicRoute:
    """The table's route with this operation id (KeyError if there is none)."""
    return _ROUTES_BY_OPERATION[operation_id]


_ROUTES_BY_OPERATION = {route.operation_id: route for route in PUBLIC_ROUTES}

Handler = TypeVar("Handler")


class PublicDispatcher(Generic[Handler]):
    """Finds the handler for a method and path, or raises the 404 or 405 to answer.

    Paths without parameters are one dict lookup (HEAD is entered as GET, whose head only the
    server sends); templated paths are matched after that, the template with the most literal
    characters first, so `/v1/responses/{id}/cancel` wins over `/v1/responses/{id}`.
    """

    def __init__(
        self, routes: Iterable[PublicRoute], handlers: Mapping[PublicHandler, Handler]
    ) -> None:
        routes = tuple(routes)
        routed = {route.handler for route in routes}
        if routed != set(handlers):
            raise ValueError(
                "every route needs a handler and every handler a route; unmatched: "
                f"{sorted(handler.name for handler in routed ^ set(handlers))}"
            )
        self._exact: dict[tuple[str, str], Handler] = {}
        self._exact_methods: dict[str, list[str]] = {}
        self._templated: list[tuple[PublicRoute, Callable[[str], object], Handler]] = []
        for route in routes:
            handler = handlers[route.handler]
            if route.is_exact:
                self._exact[(route.method, route.path)] = handler
                if route.method == "GET":
                    self._exact[("HEAD", route.path)] = handler
                self._exact_methods.setdefault(route.path, []).append(route.method)
            else:
                self._templated.append((route, route.pattern().fullmatch, handler))
        self._templated.sort(key=lambda entry: _literal_length(entry[0].path), reverse=True)
        self._not_found_hint = _not_found_hint(routes)

    def handler_for(self, method: str, path: str) -> Handler:
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler
        exact_methods = self._exact_methods.get(path)
        if exact_methods is not None:
            # A literal path owns it: `/v1/responses/compact` is no response id.
            raise MethodNotAllowed(path, method, sorted(exact_methods))
        return self._templated_handler_for(method, path)

    def _templated_handler_for(self, method: str, path: str) -> Handler:
        wanted = "GET" if method == "HEAD" else method
        for route, matches, handler in self._templated:
            if route.method == wanted and matches(path) is not None:
                return handler
        raise self._refusal(method, path)

    def _refusal(self, method: str, path: str) -> MethodNotAllowed | NotFound:
        """The 405 if some route answers `path` with another method, else the 404."""
        matching = [route for route, matches, _ in self._templated if matches(path)]
        allowed = {route.method for route in matching if route.path == matching[0].path}
        if allowed:
            return MethodNotAllowed(path, method, sorted(allowed))
        return NotFound(f"Unknown request URL: {method} {path}.{self._not_found_hint}")


def _literal_length(template: str) -> int:
    return len(_PARAMETER.sub("", template))


def _not_found_hint(routes: Iterable[PublicRoute]) -> str:
    """Where a lost client probably meant to go: the keyed API routes, and the docs page."""
    routes = tuple(routes)
    api = ", ".join(f"{route.method} {route.path}" for route in routes if route.needs_key)
    docs = [route.path for route in routes if route.handler is PublicHandler.DOCS]
    hints = [f"The gateway serves {api}"] if api else []
    hints += [f"GET {path} lists every route" for path in docs]
    return f" {'; '.join(hints)}." if hints else ""
