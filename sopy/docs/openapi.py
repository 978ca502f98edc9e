"""Sopy's OpenAPI 3.1 document: the public API on the TCP port and the admin REST routes.

Both halves are generated from the tables the servers dispatch with, so the document cannot drift
from what is served: the public routes from `sopy.routing.public_routes.PUBLIC_ROUTES`, the admin
routes from `sopy.admin.routes.ADMIN_ROUTES`, with each admin request body built from the attrs
fields of the route's admin command. Error responses are derived from the `sopy.errors` classes
a route can answer with (status, code and docstring), and the limits they quote from the
`Settings` defaults; a route whose `ErrorShape` is Anthropic's documents Anthropic's error body
and type names.
The HTTP front serves `openapi_json()` at `GET /openapi.json`, and the docs page
(`sopy.docs.page`) points Swagger UI at it. The document never changes while Sopy runs, so it is
built once; callers must not mutate it.
"""

import functools
import importlib.metadata
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import orjson

from sopy.admin.http_transport import MAX_BODY_BYTES as ADMIN_MAX_BODY_BYTES
from sopy.admin.routes import ADMIN_ROUTES, AdminRoute
from sopy.errors import (
    ConfigStoreFull,
    ConfigStoreLocked,
    ConfigStoreReadOnly,
    ConfigStoreReplaced,
    ConfigStoreUnavailable,
    Conflict,
    ErrorShape,
    InternalError,
    InvalidField,
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SopyError,
    UnknownCommand,
    anthropic_error_type,
)
from sopy.messages import AdminCommand, Unchanged
from sopy.routing.public_routes import ERROR_LIMITS, JSON, PUBLIC_ROUTES, PublicRoute
from sopy.settings import ENVIRONMENT_VARIABLES, Settings

OPENAPI_VERSION = "3.1.0"
ADMIN_SOCKET_CURL = "curl --unix-socket ./sopy-admin.sock"
ADMIN_SOCKET_BASE_URL = "http://sopy"
BEARER_AUTH = "bearerAuth"
API_KEY_AUTH = "apiKeyAuth"

_JSON_TYPE_NAMES: dict[object, str] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    types.NoneType: "null",
}

# What the admin REST routes can answer besides their success; the 413 quotes the admin
# transport's body limit (`ADMIN_MAX_BODY_BYTES`).
_ADMIN_ERRORS: tuple[type[SopyError], ...] = (
    InvalidJson,
    InvalidRequest,
    InvalidField,
    UnknownCommand,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    InternalError,
    ConfigStoreUnavailable,
    ConfigStoreFull,
    ConfigStoreLocked,
    ConfigStoreReadOnly,
    ConfigStoreReplaced,
)

_ADMIN_TAG_DESCRIPTION = (
    "Live configuration. These routes are served over the admin Unix socket "
    "(`./sopy-admin.sock`, mode 0600), not on the public port: for example "
    f"`{ADMIN_SOCKET_CURL} {ADMIN_SOCKET_BASE_URL}/admin/backend`. Every route runs the admin "
    "command of the same name as the socket's JSON-lines protocol, and every change is "
    "committed to SQLite before the reply."
)

_EVENTS_DESCRIPTION = (
    "A WebSocket (upgrade this GET) that streams configuration changes as JSON text messages. "
    "The first message is the whole configuration with every secret masked: "
    '`{"type": "snapshot", "version", "at", "snapshot"}` (schema `ConfigSnapshotMessage`). '
    'Then one `{"type": "event", "version", "kind", "at", "entity"}` message follows per '
    "committed change, in commit order (schema `ConfigEventMessage`). With `?since=V` the "
    "stream starts with exactly the changes after version V instead, or with a fresh snapshot "
    "when the journal no longer reaches back that far. A subscriber that stops reading is "
    "closed with code 4001 and a reason saying how to resume.\n\n"
    f"Served over the admin Unix socket, e.g. `{ADMIN_SOCKET_CURL} "
    f"{ADMIN_SOCKET_BASE_URL}/admin/events` with WebSocket upgrade headers, or `sopy events`."
)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI document, built on first use and shared afterwards."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(),
        "servers": [{"url": "/", "description": "The gateway's public port."}],
        "tags": _tags(),
        "paths": {**_public_paths(), **_admin_paths()},
        "components": {
            "schemas": {**_public_schemas(), **_admin_schemas()},
            "headers": {
                "RequestId": {
                    "description": "A random id for this request, to quote when reporting it.",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {
                BEARER_AUTH: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Sopy user API key (`sopy admin add_user_api_key`), "
                    "never a provider credential.",
                },
                API_KEY_AUTH: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "A Sopy user API key, as Anthropic clients send it; "
                    "accepted on the Anthropic Messages routes only.",
                },
            },
        },
    }


@functools.cache
def openapi_json() -> bytes:
    """The document as the body of `GET /openapi.json`."""
    return orjson.dumps(openapi_document())


def _info() -> dict[str, Any]:
    return {
        "title": "Sopy",
        "version": importlib.metadata.version("sopy"),
        "summary": "An OpenAI-compatible API gateway.",
        "description": "Point any OpenAI client at `/v1` with a Sopy-issued key: Sopy maps the "
        "model to a provider, picks one of its backends, injects the provider's credential and "
        "forwards the request, streaming included. Operators configure it live through the "
        "admin routes, which are served on the admin Unix socket, not on this port.",
    }


def _tags() -> list[dict[str, str]]:
    return [
        {"name": "openai", "description": "The OpenAI-compatible API; needs a bearer key."},
        {
            "name": "anthropic",
            "description": "Anthropic's Messages API, for Claude Code and the `anthropic` SDK; "
            "needs a key as `x-api-key` or bearer, and answers errors in Anthropic's shape.",
        },
        {"name": "gateway", "description": "Greetings and health."},
        {"name": "docs", "description": "This document and its interactive page."},
        {"name": "admin", "description": _ADMIN_TAG_DESCRIPTION},
    ]


# -- public routes ----------------------------------------------------------------------------


def _public_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in PUBLIC_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _public_operation(route)
    return paths


def _public_operation(route: PublicRoute) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [route.tag],
        "operationId": route.operation_id,
        "summary": route.summary,
    }
    if route.description is not None:
        operation["description"] = route.description
    if route.path_parameters:
        operation["parameters"] = [
            _parameter(name, "path", {"type": "string"}, required=True)
            for name in route.path_parameters
        ]
    anthropic = route.error_shape is ErrorShape.ANTHROPIC
    if route.needs_key:
        operation["security"] = [{BEARER_AUTH: []}] + ([{API_KEY_AUTH: []}] if anthropic else [])
    if route.request_body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {route.request_media_type: {"schema": _ref(route.request_body)}},
        }
    success = {
        "description": route.reply.description,
        "headers": _request_id_header(),
        "content": {
            media_type: {"schema": {"type": "string"} if schema_name is None else _ref(schema_name)}
            for media_type, schema_name in route.reply.content.items()
        },
    }
    if route.links:
        success["links"] = {
            operation_id: {"operationId": operation_id, "parameters": dict(parameters)}
            for operation_id, parameters in route.links.items()
        }
    limits = {error: _setting_limit(name) for error, name in ERROR_LIMITS.items()}
    if anthropic:
        errors = _error_responses(
            route.answers,
            _ref("AnthropicError"),
            limits,
            _request_id_header(),
            label=lambda error: f"`{anthropic_error_type(error.status)}` (`{error.code}`)",
        )
    else:
        errors = _error_responses(route.answers, _ref("OpenAIError"), limits, _request_id_header())
    operation["responses"] = {str(route.reply.status): success, **errors}
    return operation


def _request_id_header() -> dict[str, Any]:
    return {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}


# -- error responses, from the classes in sopy.errors -----------------------------------------


def _error_responses(
    errors: Iterable[type[SopyError]],
    schema: dict[str, Any],
    limits: Mapping[type[SopyError], str],
    headers: dict[str, Any] | None = None,
    label: Callable[[type[SopyError]], str] = lambda error: f"`{error.code}`",
) -> dict[str, Any]:
    """One response per status: each error class's label (its code, or the type name of the
    route's error shape) and docstring, and the limit it enforces, if any."""
    by_status: dict[int, list[str]] = {}
    for error in errors:
        described = f"{label(error)}: {_docstring(error)}"
        if error in limits:
            described += f" {limits[error]}"
        by_status.setdefault(error.status, []).append(described)
    responses: dict[str, Any] = {}
    for status, descriptions in sorted(by_status.items()):
        response: dict[str, Any] = {"description": " ".join(descriptions)}
        if headers is not None:
            response["headers"] = headers
        response["content"] = {JSON: {"schema": schema}}
        responses[str(status)] = response
    return responses


def _docstring(error: type[SopyError]) -> str:
    """The class's own docstring; an undocumented error class is a bug, not an empty text."""
    text = error.__dict__.get("__doc__")
    if not text:
        raise TypeError(f"{error.__name__} needs a docstring: the API documentation quotes it")
    return inspect.cleandoc(text).replace("\n", " ")


def _setting_limit(name: str) -> str:
    """`name`'s help, default, flag and environment variable, e.g. for `max_body_bytes`."""
    field = attrs.fields_dict(Settings)[name]
    default = field.default
    if not isinstance(default, int | float):
        raise TypeError(f"{name} has no numeric default to quote")
    flag = "--" + name.replace("_", "-")
    return (
        f"Limit: {field.metadata['help']}, {_quantity(name, default)} by default "
        f"(`{flag}`, `{ENVIRONMENT_VARIABLES[name]}`)."
    )


def _quantity(name: str, value: float) -> str:
    if name.endswith("_bytes"):
        return _size(int(value))
    return f"{value:g}"


def _size(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _public_schemas() -> dict[str, Any]:
    return {
        "Message": _object({"message": {"type": "string"}}),
        "Health": _object({"status": {"const": "ok"}, "config_version": {"type": "integer"}}),
        "Model": _model_schema(),
        "ModelList": _object({"object": {"const": "list"}, "data": _array_of("Model")}),
        "ChatCompletionRequest": _chat_completion_request_schema(),
        "CompletionRequest": _model_request_schema(
            "A legacy text completion request.", {"prompt": _TEXT_OR_TEXTS}
        ),
        "EmbeddingRequest": _model_request_schema(
            "An embeddings request.", {"input": _TEXT_OR_TEXTS}
        ),
        "ModerationRequest": _model_request_schema(
            "A moderation request.", {"input": _TEXT_OR_TEXTS}
        ),
        "ImageRequest": _model_request_schema(
            "An image generation request.", {"prompt": {"type": "string"}}
        ),
        "SpeechRequest": _model_request_schema(
            "A text-to-speech request.", {"input": {"type": "string"}, "voice": {"type": "string"}}
        ),
        "ResponseInputRequest": _model_request_schema(
            "A Responses API request for its input alone.", {}
        ),
        "AudioUploadRequest": _form_model_request_schema(
            "An audio upload.", {"file": {"type": "string", "format": "binary"}}
        ),
        "ImageEditRequest": _form_model_request_schema(
            "An image edit.", {"image": {"type": "string", "format": "binary"}}
        ),
        "PassedThrough": {
            "type": "object",
            "description": "The provider's answer, relayed unchanged.",
            "additionalProperties": True,
        },
        "ChatMessage": _chat_message_schema(),
        "ChatCompletion": _chat_completion_schema(),
        "ServerSentEvent": _server_sent_event_schema(),
        "ResponseRequest": {
            "type": "object",
            "description": "An OpenAI Responses API request. Sopy checks only `model`, "
            "`stream` and `previous_response_id`, and forwards the body unchanged, so any "
            "other field the provider accepts works.",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string", "minLength": 1, "description": "A mapped model name."},
                "input": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                    ]
                },
                "stream": {"type": "boolean"},
                "previous_response_id": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A response made with the same key; it goes to the backend "
                    "that made it.",
                },
            },
            "examples": [{"model": "gpt-4.1", "input": "Hello!"}],
        },
        "Response": {
            "type": "object",
            "description": "The backend's answer (a response object, a deletion, a list of "
            "input items), relayed unchanged.",
        },
        "OpenAIError": _openai_error_schema(),
        "AnthropicMessageRequest": _anthropic_request_schema(counting=False),
        "AnthropicTokenCountRequest": _anthropic_request_schema(counting=True),
        "AnthropicMessage": _anthropic_message_schema(),
        "AnthropicTokenCount": _object({"input_tokens": {"type": "integer"}}),
        "AnthropicError": _anthropic_error_schema(),
        "OpenAPIDocument": {"type": "object", "description": "An OpenAPI 3.1 document."},
    }


def _server_sent_event_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One server-sent event: `data` is a JSON chunk of the answer (a "
        "chat.completion.chunk for chat completions), a final error object, or `[DONE]`, "
        "which ends the stream.",
        "required": ["data"],
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    }


def _model_schema() -> dict[str, Any]:
    return _object(
        {
            "id": {"type": "string", "description": "The model name clients ask for."},
            "object": {"const": "model"},
            "created": {"type": "integer", "description": "Unix time of the mapping."},
            "owned_by": {"type": "string", "description": "The provider it is mapped to."},
            "upstream_model": {
                "type": "string",
                "description": "Sopy's addition: the model name that provider knows it by.",
            },
        }
    )


def _chat_completion_request_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An OpenAI chat completion request. Sopy checks only the fields below "
        "and forwards the body unchanged, so any other field the provider accepts works.",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A mapped model name."},
            "messages": _array_of("ChatMessage"),
            "stream": {"type": ["boolean", "null"], "description": "Reply as server-sent events."},
            "stream_options": {"type": ["object", "null"], "additionalProperties": True},
        },
        "additionalProperties": True,
        "examples": [{"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hello!"}]}],
    }


_TEXT_OR_TEXTS = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
}


def _model_request_schema(what: str, required: dict[str, Any]) -> dict[str, Any]:
    """A JSON request routed by its `model`, with the fields the provider requires."""
    return {
        "type": "object",
        "description": f"{what} Sopy reads only `model` (and checks `stream` and "
        "`stream_options`) and forwards the body unchanged, so any field the provider accepts "
        "works.",
        "required": ["model", *required],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A mapped model name."},
            **required,
            "stream": {"type": ["boolean", "null"], "description": "Reply as server-sent events."},
            "stream_options": {"type": ["object", "null"], "additionalProperties": True},
        },
        "additionalProperties": True,
    }


def _form_model_request_schema(what: str, required: dict[str, Any]) -> dict[str, Any]:
    """A multipart/form-data request routed by its `model` field."""
    return {
        "type": "object",
        "description": f"{what} Sopy reads only the `model` field and forwards the body unchanged.",
        "required": ["model", *required],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A mapped model name."},
            **required,
        },
        "additionalProperties": True,
    }


def _chat_message_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "examples": ["system", "user", "assistant"]},
            "content": {"type": ["string", "array", "null"]},
        },
        "additionalProperties": True,
    }


def _chat_completion_schema() -> dict[str, Any]:
    choice = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "message": _ref("ChatMessage"),
            "finish_reason": {"type": ["string", "null"]},
        },
        "additionalProperties": True,
    }
    return {
        "type": "object",
        "description": "The provider's reply, relayed unchanged.",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": {"type": "object", "additionalProperties": True},
        },
        "additionalProperties": True,
    }


def _anthropic_request_schema(*, counting: bool) -> dict[str, Any]:
    required = ["model", "messages"] if counting else ["model", "max_tokens", "messages"]
    properties: dict[str, Any] = {
        "model": {"type": "string", "minLength": 1, "description": "A mapped model name."},
        "messages": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
        "system": {"type": ["string", "array"]},
    }
    if not counting:
        properties["max_tokens"] = {"type": "integer", "minimum": 1}
        properties["stream"] = {"type": ["boolean", "null"], "description": "Reply as events."}
    return {
        "type": "object",
        "description": "An Anthropic Messages request. For a provider of kind `anthropic` Sopy "
        "checks only `model` (and `stream`) and forwards the body unchanged, the provider "
        "checks the rest; for another kind Sopy reads it whole to translate it, and refuses "
        "what is malformed or cannot be translated with a 400 naming the field.",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
        "examples": [
            {
                "model": "claude-sonnet-4-5",
                **({} if counting else {"max_tokens": 1024}),
                "messages": [{"role": "user", "content": "Hello!"}],
            }
        ],
    }


def _anthropic_message_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The provider's message, relayed unchanged.",
        "required": ["id", "type", "role", "content", "model"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "content": {"type": "array", "items": {"type": "object"}},
            "model": {"type": "string"},
            "stop_reason": {"type": ["string", "null"]},
            "usage": {"type": "object", "additionalProperties": True},
        },
        "additionalProperties": True,
    }


def _anthropic_error_schema() -> dict[str, Any]:
    detail = _object(
        {
            "type": {
                "type": "string",
                "examples": ["invalid_request_error", "authentication_error", "not_found_error"],
            },
            "message": {"type": "string", "description": "What went wrong and what to do."},
        }
    )
    schema = _object({"type": {"const": "error"}, "error": detail})
    schema["properties"]["request_id"] = {
        "type": "string",
        "description": "The request's id, as in the `request-id` and `x-request-id` headers.",
    }
    return schema


def _openai_error_schema() -> dict[str, Any]:
    detail = _object(
        {
            "message": {"type": "string", "description": "What went wrong and what to do."},
            "type": {"type": "string", "examples": ["invalid_request_error", "server_error"]},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"], "examples": ["invalid_api_key"]},
        }
    )
    return _object({"error": detail})


# -- admin routes -----------------------------------------------------------------------------


def _admin_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ADMIN_ROUTES:
        path_item = paths.setdefault(route.path, {"servers": [_admin_socket_server()]})
        path_item[route.method.lower()] = _admin_operation(route)
    paths["/admin/events"] = {
        "servers": [_admin_socket_server()],
        "get": _admin_events_operation(),
    }
    paths["/admin/usage/events"] = {
        "servers": [_admin_socket_server()],
        "get": _usage_events_operation(),
    }
    return paths


def _admin_socket_server() -> dict[str, str]:
    return {
        "url": ADMIN_SOCKET_BASE_URL,
        "description": f"The admin Unix socket: `{ADMIN_SOCKET_CURL} {ADMIN_SOCKET_BASE_URL}"
        "/admin/...` (any host name works); not reachable from a browser.",
    }


def _admin_operation(route: AdminRoute) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["admin"],
        "operationId": route.command.command,
        "summary": route.summary,
        "description": f"Runs the `{route.command.command}` admin command. Served over the "
        f"admin Unix socket, not the public port: `{_admin_curl(route)}`.",
    }
    parameters = _admin_parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.takes_body:
        operation["requestBody"] = _admin_request_body(route.command)
    operation["responses"] = _admin_responses(route)
    return operation


def _admin_curl(route: AdminRoute) -> str:
    curl = f"{ADMIN_SOCKET_CURL} -X {route.method} {ADMIN_SOCKET_BASE_URL}{route.path}"
    if route.takes_body:
        curl += " -H 'content-type: application/json' -d '{...}'"
    return curl


def _admin_parameters(route: AdminRoute) -> list[dict[str, Any]]:
    fields = attrs.fields_dict(route.command)
    parameters = []
    if route.path_field is not None:
        schema = _json_schema(fields[route.path_field].type)
        parameters.append(_parameter(route.path_field, "path", schema, required=True))
    for name in route.query_fields:
        field = fields[name]
        parameters.append(
            _parameter(name, "query", _field_schema(field), required=not _has_default(field))
        )
    return parameters


def _admin_request_body(command: type[AdminCommand]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _ref(_command_schema_name(command))}},
    }


def _admin_responses(route: AdminRoute) -> dict[str, Any]:
    success = {
        "description": f"The result of `{route.command.command}`.",
        "content": {"application/json": {"schema": _ref("AdminSuccess")}},
    }
    limits: dict[type[SopyError], str] = {PayloadTooLarge: f"Limit: {_size(ADMIN_MAX_BODY_BYTES)}."}
    errors = _error_responses(_ADMIN_ERRORS, _ref("AdminError"), limits)
    return {str(route.status): success, **errors}


_USAGE_EVENTS_DESCRIPTION = (
    "A WebSocket (upgrade this GET) that streams one JSON text message per model request as it "
    'ends: `{"type": "usage", "record": {"at", "request_id", "key_id", "model", "provider", '
    '"backend", "route", "status", "tokens": {"input_tokens", "output_tokens", '
    '"cached_input_tokens", "reasoning_tokens"}, "tokens_from_provider", "upstream_ms", '
    '"first_token_ms", "client_gone", "cut_short"}}`. Key ids only, never keys. A subscriber '
    "that stops reading is closed with code 4001; `get_usage` (GET /admin/usage) has every "
    "record.\n\n"
    f"Served over the admin Unix socket, e.g. `{ADMIN_SOCKET_CURL} "
    f"{ADMIN_SOCKET_BASE_URL}/admin/usage/events` with WebSocket upgrade headers."
)


def _admin_events_operation() -> dict[str, Any]:
    since = _parameter(
        "since",
        "query",
        {"type": "integer"},
        required=False,
        description="The last config version the subscriber has seen; resume after it.",
    )
    return {
        "tags": ["admin"],
        "operationId": "admin_events",
        "summary": "Follow configuration changes live (WebSocket)",
        "description": _EVENTS_DESCRIPTION,
        "parameters": [since],
        "responses": {
            "101": {"description": "Switching protocols: the change stream follows."},
            "400": {
                "description": "`since` is not an integer.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    }


def _usage_events_operation() -> dict[str, Any]:
    return {
        "tags": ["admin"],
        "operationId": "admin_usage_events",
        "summary": "Follow usage records live (WebSocket)",
        "description": _USAGE_EVENTS_DESCRIPTION,
        "responses": {
            "101": {"description": "Switching protocols: the usage stream follows."},
        },
    }


def _admin_schemas() -> dict[str, Any]:
    commands = dict.fromkeys(route.command for route in ADMIN_ROUTES if route.takes_body)
    return {
        **{_command_schema_name(command): _command_schema(command) for command in commands},
        "AdminSuccess": _object({"ok": {"const": True}, "result": {"description": "Its result."}}),
        "AdminError": _admin_error_schema(),
        "ConfigSnapshotMessage": _snapshot_message_schema(),
        "ConfigEventMessage": _event_message_schema(),
    }


def _command_schema_name(command: type[AdminCommand]) -> str:
    return f"{command.__name__}Request"


def _command_schema(command: type[AdminCommand]) -> dict[str, Any]:
    """The JSON body of `command`: its attrs fields; those without a default are required."""
    fields = attrs.fields(command)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {field.name: _field_schema(field) for field in fields},
        "required": [field.name for field in fields if not _has_default(field)],
        "additionalProperties": False,
    }
    if command.__doc__:
        schema["description"] = command.__doc__
    return schema


def _field_schema(field: "attrs.Attribute[Any]") -> dict[str, Any]:
    schema = _json_schema(field.type)
    if "enum" in field.metadata:
        schema["enum"] = list(field.metadata["enum"])
    if isinstance(field.default, str | int | bool | None):
        schema["default"] = field.default
    elif isinstance(field.default, tuple):
        schema["default"] = list(field.default)
    elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        schema["default"] = field.default.factory()
    return schema


def _has_default(field: "attrs.Attribute[Any]") -> bool:
    return field.default is not attrs.NOTHING


def _json_schema(python_type: object) -> dict[str, Any]:
    """`str` -> string, `int | None` -> [integer, null], `tuple[str, ...]` -> array of
    strings, and so on; anything else is a bug."""
    if python_type == tuple[str, ...]:
        return {"type": "array", "items": {"type": "string"}}
    if python_type == Mapping[str, str]:
        return {"type": "object", "additionalProperties": {"type": "string"}}
    # An `update_user_api_key` field not sent is left unchanged: that is no JSON value.
    members = [m for m in typing.get_args(python_type) or (python_type,) if m is not Unchanged]
    if len(members) > 1 and all(m in _JSON_TYPE_NAMES for m in members):
        return {"type": [_JSON_TYPE_NAMES[member] for member in members]}
    if len(members) > 1:
        return {"anyOf": [_json_schema(member) for member in members]}
    (member,) = members
    if member not in _JSON_TYPE_NAMES:
        raise TypeError(f"no JSON schema type for {python_type!r}")
    return {"type": _JSON_TYPE_NAMES[member]}


def _admin_error_schema() -> dict[str, Any]:
    error = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "examples": ["invalid_field", "not_found", "conflict"]},
            "message": {"type": "string", "description": "What went wrong and what to do."},
            "field": {"type": "string", "description": "The offending field, if any."},
        },
    }
    return _object({"ok": {"const": False}, "error": error})


def _snapshot_message_schema() -> dict[str, Any]:
    return _object(
        {
            "type": {"const": "snapshot"},
            "version": {"type": "integer"},
            "at": {"type": "number", "description": "Unix time of the version's commit."},
            "snapshot": {
                "type": "object",
                "description": "The configuration, secrets masked: `admin_auth`, "
                "`user_api_keys`, `backends` and `model_mappings`.",
            },
        }
    )


def _event_message_schema() -> dict[str, Any]:
    return _object(
        {
            "type": {"const": "event"},
            "version": {"type": "integer"},
            "kind": {"type": "string", "examples": ["backend_added", "model_mapping_removed"]},
            "at": {"type": "number", "description": "Unix time of the change's commit."},
            "entity": {"type": "object", "description": "What changed; never a secret."},
        }
    )


# -- schema building blocks -------------------------------------------------------------------


def _ref(schema_name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema_name}"}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object whose listed properties are all required."""
    return {"type": "object", "required": list(properties), "properties": properties}


def _array_of(schema_name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(schema_name)}


def _parameter(
    name: str,
    location: str,
    schema: dict[str, Any],
    *,
    required: bool,
    description: str | None = None,
) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": location,
        "required": required,
        "schema": schema,
    }
    if description is not None:
        parameter["description"] = description
    return parameter
