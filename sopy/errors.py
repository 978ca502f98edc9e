"""Sopy's one exception hierarchy and its single mapping to error bodies.

Every failure a user can see is a `SopyError` subclass carrying an HTTP status, an OpenAI error
`type` and a stable `code`. The public API renders them in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`), except on the Anthropic Messages routes,
which render them in Anthropic's (`{"type": "error", "error": {"type", "message"}}`, with
Anthropic's type for the status); each public route declares its `ErrorShape`. The admin socket
renders the same errors as `{"ok": false, "error": {"code", "message"}}`. Messages say what to do
next and never hold secrets.
Each subclass's docstring says when it is raised, for whoever reads the API documentation: the
OpenAPI document (`sopy.docs.openapi`) quotes it as the description of that error's response.
"""

import enum
import math
from typing import Any, ClassVar


class ErrorShape(enum.Enum):
    """Which API's error body a public route answers with."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


# Anthropic's error type for each status (https://docs.claude.com/en/api/errors, and the
# `anthropic` SDK's `ErrorType` for 409 and 504). Anthropic answers other 4xx as
# `invalid_request_error`; Sopy answers its other 5xx (500, 502) as `api_error`, and 503, a
# refusal that ends on its own, as Anthropic's own 529 `overloaded_error`. 402 and 529 come
# only from providers, whose errors a Messages client sees translated.
_ANTHROPIC_TYPES: dict[int, str] = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The `error.type` Anthropic's API uses for an error answered with `status`."""
    default = "invalid_request_error" if status < 500 else "api_error"
    return _ANTHROPIC_TYPES.get(status, default)


class SopyError(Exception):
    """A failure with a user-facing message; subclasses fix status, type and code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers an HTTP response carrying this error must have besides the usual ones."""
        return []

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self, request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": anthropic_error_type(self.status), "message": self.message},
        }
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def body(self, shape: ErrorShape, request_id: str | None = None) -> dict[str, Any]:
        """The error body in the shape of the route it answers; Anthropic's carries the
        request's id, as Anthropic's own errors do."""
        if shape is ErrorShape.ANTHROPIC:
            return self.anthropic_body(request_id)
        return self.openai_body()

    def admin_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["field"] = self.param
        return error


class InvalidRequest(SopyError):
    """The request is malformed, or a field is missing or has the wrong type; the error names
    the field."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJson(InvalidRequest):
    """The body is not valid JSON; send a JSON object with `Content-Type: application/json`."""

    code = "invalid_json"


class InvalidField(InvalidRequest):
    """A field has an invalid value; the error names the field and what it must be."""

    code = "invalid_field"


class ProviderKindMismatch(InvalidRequest):
    """The model is mapped only to providers whose kind does not serve this route (an OpenAI
    route other than chat completions and Responses, such as embeddings, to a provider of kind
    `openai-chat` or `anthropic`); the error names the provider and its kind. An admin maps the
    model to a provider of kind `openai` or `azure`."""

    code = "unsupported_provider_kind"


class UnknownCommand(InvalidRequest):
    """There is no admin command of that name; `sopy admin --help` lists them."""

    code = "unknown_command"


class AuthenticationFailed(SopyError):
    """The bearer key (on the Anthropic routes, the `x-api-key` or bearer key) is missing,
    unknown or deactivated."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(SopyError):
    """There is no such route or entry."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """No provider is mapped to the requested model; `GET /v1/models` lists the mapped ones."""

    code = "model_not_found"


class ResponseNotFound(NotFound):
    """No stored Responses API response with this id was made with the caller's key (it never
    existed, expired, was deleted, or belongs to another key: the caller cannot tell which)."""

    code = "response_not_found"


class PreviousResponseNotFound(NotFound):
    """`previous_response_id` names no response the caller's key made, as for
    `ResponseNotFound`."""

    code = "previous_response_not_found"


class MethodNotAllowed(SopyError):
    """The path exists, but not with this method; the `Allow` header lists its methods."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, path: str, method: str, allowed: list[str]) -> None:
        super().__init__(f"{path} accepts {', '.join(allowed)}, not {method}")
        self.allowed = allowed

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", ", ".join(self.allowed).encode())]


class Conflict(SopyError):
    """The entry exists already (pass `replace: true` where offered)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class UpgradeRequired(SopyError):
    """The WebSocket mode cannot be served (no provider the gateway routes to supports it, or
    the request did not ask for a websocket upgrade): use the plain HTTP route instead."""

    status = 426
    type = "invalid_request_error"
    code = "websocket_not_supported"


class PayloadTooLarge(SopyError):
    """The request body is larger than the limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(SopyError):
    """The request body did not arrive within the time allowed."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class TemporarilyUnavailable(SopyError):
    """A refusal that ends on its own; `retry_after` (seconds, rounded up to a whole one), when
    known, tells the client when to come back, as `Retry-After`."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = None if retry_after is None else max(math.ceil(retry_after), 1)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(self.retry_after).encode())]


class ServerBusy(SopyError):
    """The gateway is serving as many requests as it may at once; retry shortly."""

    status = 503
    type = "server_error"
    code = "server_busy"

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        # The load that refused this request is momentary; SDKs honour Retry-After.
        return [(b"retry-after", b"1")]


class InternalError(SopyError):
    """Sopy failed unexpectedly; its log has the details."""


class ConfigStoreUnavailable(SopyError):
    """The config database cannot take a write; the message names the cause and the fix. The
    change was not made, reads keep working, and the next write is tried afresh."""

    status = 503
    type = "server_error"
    code = "config_store_unavailable"


class ConfigStoreFull(ConfigStoreUnavailable):
    """The disk holding the config database is full."""

    code = "config_store_full"


class ConfigStoreLocked(ConfigStoreUnavailable):
    """Another process has held a write lock on the config database too long."""

    code = "config_store_locked"


class ConfigStoreReadOnly(ConfigStoreUnavailable):
    """The config database, its directory or its filesystem is read-only."""

    code = "config_store_read_only"


class ConfigStoreReplaced(ConfigStoreUnavailable):
    """The config database file was deleted or replaced while Sopy ran; writes wait for a
    restart."""

    code = "config_store_replaced"


class UpstreamError(SopyError):
    """The provider's backend could not be reached, or broke off its answer."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamResponseTooLarge(UpstreamError):
    """A backend's non-streaming answer was larger than `--max-response-bytes`."""

    code = "upstream_response_too_large"

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class UpstreamRateLimited(TemporarilyUnavailable):
    """Every backend that could take the request is held off by its provider's rate limit."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class KeyExpired(AuthenticationFailed):
    """The user key's `expires_at` has passed; an admin can extend it with
    `update_user_api_key` or issue a new key."""

    code = "key_expired"


class ModelNotAllowed(SopyError):
    """The user key's `models` allow-list does not name the model the request asked for (the
    name the client sent, whatever the provider knows it as); an admin can widen it with
    `update_user_api_key`."""

    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class KeyRateLimited(TemporarilyUnavailable):
    """The user key is over its `rpm` (requests per minute), `tpm` (tokens per minute) or
    `max_parallel` (requests at once) limit; `Retry-After` and OpenAI's `x-ratelimit-*`
    headers say when it has room again."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        rate_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.rate_headers = rate_headers or []

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().response_headers(), *self.rate_headers]


class InsufficientQuota(SopyError):
    """The user key has spent its `token_budget`; an admin can raise it, or start the count
    over with `update_user_api_key` and `reset_usage: true`."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class NoBackendAvailable(TemporarilyUnavailable):
    """The model's provider has no backend URL (`sopy admin add_backend` fixes it), every
    backend is resting after failures, or the configuration is still loading."""

    status = 503
    type = "server_error"
    code = "no_backend"


class UpstreamTimeout(SopyError):
    """The provider's backend did not answer in time."""

    status = 504
    type = "server_error"
    code = "upstream_timeout"


class StartupError(Exception):
    """Sopy cannot start as configured; the message tells the operator what to change."""


def innermost(error: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group; trio nurseries wrap every error."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
