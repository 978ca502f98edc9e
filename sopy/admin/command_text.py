"""Admin command fields given as text (CLI flags, URL path segments, query strings), turned into
the JSON value the command's field expects. Used by `sopy admin` and the admin REST routes; the
command itself is still validated by `parse_admin_command`. Booleans are read by
`sopy.boolean_text`, the same parser as the settings'."""

import typing
from collections.abc import Mapping
from typing import Any

import attrs

from sopy.boolean_text import NotABoolean, parse_boolean
from sopy.errors import InvalidField
from sopy.messages import AdminCommand, Unchanged


def field_value(command: type[AdminCommand] | None, field: str, text: str) -> Any:
    """`text` as the type of `command`'s `field` (a list field takes comma-separated names, an
    object field comma-separated name=value pairs, a field that may be null `null`); unknown
    fields stay text for the parser to refuse by name."""
    fields = _fields_of(command)
    field_type: Any = fields[field].type if field in fields else str
    members = typing.get_args(field_type)
    if type(None) in members:
        if text == "null":
            return None
        (field_type,) = [m for m in members if m is not type(None) and m is not Unchanged]
    if field_type is bool:
        try:
            return parse_boolean(text, f"field '{field}'")
        except NotABoolean as exc:
            raise InvalidField(str(exc), param=field) from None
    if field_type == tuple[str, ...]:
        return [item.strip() for item in text.split(",") if item.strip()]
    if field_type == Mapping[str, str]:
        return _name_pairs(field, text)
    if field_type is int:
        try:
            return int(text)
        except ValueError:
            raise InvalidField(
                f"field '{field}' takes an integer (got {text!r})", param=field
            ) from None
    return text


def _name_pairs(field: str, text: str) -> dict[str, str]:
    """`azure=gpt-4o-prod, backup=gpt-4o` as an object (names hold neither `,` nor `=`)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        if not has_value:
            raise InvalidField(
                f"field '{field}' takes comma-separated name=value pairs (got {item!r})",
                param=field,
            )
        pairs[key.strip()] = value.strip()
    return pairs


def is_flag(command: type[AdminCommand] | None, field: str) -> bool:
    """Whether `field` is a boolean that a bare `--field` switches on."""
    fields = _fields_of(command)
    return field in fields and fields[field].type is bool


def _fields_of(command: type[AdminCommand] | None) -> dict[str, "attrs.Attribute[Any]"]:
    return attrs.fields_dict(command) if command is not None else {}
