"""The JSON form of the messages in `sopy.messages`: one cattrs converter, kept apart from the
message data, and the functions every transport and the config store use with it.

`parse_admin_command` is the only way JSON becomes a command: unknown commands, unknown fields,
missing fields and wrong types become `SopyError`s naming the field, never tracebacks. The
admin transports (`sopy.actors.admin_socket`, `sopy.admin`) send every reply through
`admin_reply_json`; the config store (`sopy.config`) keeps its journal in `config_event_json`
form; the event stream (`sopy.admin.event_views`) unstructures with `converter`.
"""

import typing
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn

from sopy.errors import InvalidField, InvalidRequest, SopyError, UnknownCommand
from sopy.messages import (
    ADMIN_COMMANDS,
    CONFIG_EVENTS,
    AdminCommand,
    AdminResult,
    CommandReply,
    CommandSucceeded,
    ConfigEvent,
    Unchanged,
    UpdateUserApiKey,
)


def _strict_str(value: object, _type: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_json_type_name(value)}")
    return value


def _strict_int(value: object, _type: type) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"must be an integer, not {_json_type_name(value)}")
    return value


def _strict_bool(value: object, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {_json_type_name(value)}")
    return value


def _json_type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _strict_strings(value: object, _type: type) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"must be an array of strings, not {_json_type_name(value)}")
    return tuple(_strict_str(item, str) for item in value)


def _strict_string_map(value: object, _type: type) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"must be an object of strings, not {_json_type_name(value)}")
    return {_strict_str(key, str): _strict_str(item, str) for key, item in value.items()}


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook_func(lambda kind: kind == tuple[str, ...], _strict_strings)
    converter.register_structure_hook_func(
        lambda kind: kind == Mapping[str, str], _strict_string_map
    )
    # An `update_user_api_key` field that was sent: null clears it, anything else is its value.
    converter.register_structure_hook_func(
        lambda kind: Unchanged in typing.get_args(kind),
        lambda value, kind: None if value is None else converter.structure(value, _sent(kind)),
    )
    # Its JSON form, as a client would send it, has only the fields that change something.
    converter.register_unstructure_hook(
        UpdateUserApiKey,
        make_dict_unstructure_fn(UpdateUserApiKey, converter, _cattrs_omit_if_default=True),
    )
    return converter


def _sent(kind: object) -> Any:
    """The type of a value sent for an `update_user_api_key` field of type `kind`."""
    (sent,) = [member for member in typing.get_args(kind) if member not in (Unchanged, type(None))]
    return sent


converter = _make_converter()


def _structuring_error(exc: BaseException, command: str) -> SopyError:
    """Turn a structuring or validation failure into one error naming the first bad field."""
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, others = exc.group_exceptions()
        if with_notes:
            inner, note = with_notes[0]
            if isinstance(inner, KeyError):
                return InvalidField(f"{command} needs field '{note.name}'", param=note.name)
            return InvalidField(f"field '{note.name}' {inner}", param=note.name)
        return _structuring_error(others[0], command)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        extra = ", ".join(sorted(exc.extra_fields))
        return InvalidField(f"{command} does not take field(s): {extra}", param=extra)
    message = str(exc)
    field = message.split("'")[1] if message.startswith("field '") else None
    return InvalidField(message, param=field)


def parse_admin_command(payload: object) -> AdminCommand:
    """Build the admin command a decoded JSON object asks for, or raise a SopyError.

    A request `"id"` is a correlation id that the transport echoes; it is dropped here unless the
    command itself has an `id` field (the user API key commands).
    """
    if not isinstance(payload, dict):
        raise InvalidRequest(
            f"an admin command must be a JSON object, not {_json_type_name(payload)}"
        )
    name = payload.get("command")
    if not isinstance(name, str):
        raise InvalidField("field 'command' is required and must be a string", param="command")
    cls = ADMIN_COMMANDS.get(name)
    if cls is None:
        known = ", ".join(sorted(ADMIN_COMMANDS))
        raise UnknownCommand(f"unknown command {name!r}; known commands: {known}", param="command")
    fields = {key: value for key, value in payload.items() if key != "command"}
    if "id" in fields and "id" not in attrs.fields_dict(cls):
        del fields["id"]
    try:
        return converter.structure(fields, cls)
    except (ValueError, cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        raise _structuring_error(exc, name) from None


def admin_command_json(command: AdminCommand) -> dict[str, Any]:
    """The JSON object form of a command, as a client would send it."""
    body: dict[str, Any] = {"command": command.command}
    body.update(converter.unstructure(command))
    return body


def admin_result_json(result: AdminResult) -> Any:
    return converter.unstructure(result)


def admin_reply_json(reply: CommandReply, request_id: object = None) -> dict[str, Any]:
    """The reply envelope every admin transport sends: the same JSON on every transport."""
    if isinstance(reply, CommandSucceeded):
        body: dict[str, Any] = {"ok": True, "result": admin_result_json(reply.result)}
        if reply.lagging_workers:
            body["lagging_workers"] = list(reply.lagging_workers)
    else:
        body = {"ok": False, "error": reply.error.admin_body()}
    return body if request_id is None else {"id": request_id, **body}


def config_event_json(event: ConfigEvent) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": event.kind}
    body.update(converter.unstructure(event))
    return body


def parse_config_event(payload: Mapping[str, Any]) -> ConfigEvent:
    fields = dict(payload)
    cls = CONFIG_EVENTS[fields.pop("kind")]
    return converter.structure(fields, cls)
