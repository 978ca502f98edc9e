"""Sopy's one exception hierarchy and its single mapping to error bodies.

Every failure a user can see is a `SopyError` subclass carrying an HTTP status, an OpenAI error
`type` and a stable `code`. The public API renders them in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`); the admin socket renders the same errors as
`{"ok": false, "error": {"code", "message"}}`. Messages say what to do next and never hold secrets.
"""

from typing import Any, ClassVar


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

    def admin_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["field"] = self.param
        return error


class InvalidRequest(SopyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class InvalidField(InvalidRequest):
    code = "invalid_field"


class UnknownCommand(InvalidRequest):
    code = "unknown_command"


class AuthenticationFailed(SopyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(SopyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(SopyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, path: str, method: str, allowed: list[str]) -> None:
        super().__init__(f"{path} accepts {', '.join(allowed)}, not {method}")
        self.allowed = allowed

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", ", ".join(self.allowed).encode())]


class Conflict(SopyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(SopyError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(SopyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ServerBusy(SopyError):
    status = 503
    type = "server_error"
    code = "server_busy"


class InternalError(SopyError):
    pass


class ConfigStoreUnavailable(SopyError):
    """The config database cannot take a write; the message names the cause and the fix. The
    change was not made, reads keep working, and the next write is tried afresh."""

    status = 503
    type = "server_error"
    code = "config_store_unavailable"


class ConfigStoreFull(ConfigStoreUnavailable):
    code = "config_store_full"


class ConfigStoreLocked(ConfigStoreUnavailable):
    code = "config_store_locked"


class ConfigStoreReadOnly(ConfigStoreUnavailable):
    code = "config_store_read_only"


class ConfigStoreReplaced(ConfigStoreUnavailable):
    code = "config_store_replaced"


class UpstreamError(SopyError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class NoBackendAvailable(SopyError):
    status = 503
    type = "server_error"
    code = "no_backend"


class UpstreamTimeout(SopyError):
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
