"""The `model` field of a request body, found where it lies and replaced in place (sans-IO).

The HTTP front reads the model a client asked for from a JSON body (parsed whole, as it checks
it anyway) or, for uploads, from the `model` field of a multipart/form-data body (`form_model`,
which reads only part heads and never copies a file). When a provider knows the model under
another name (`ProviderRoute.upstream_model`), the relay sends it the same body with only the
model's value replaced (`with_model`): the span of that value is located once
(`json_model_span` / `form_model_span`) and the new value spliced in, so the rest of the body
goes upstream byte for byte, however it was written, and is never re-serialised.
"""

import re

import orjson

Span = tuple[int, int]
"""Where a value lies in a body: `body[start:end]`."""

# A JSON string token (valid JSON assumed: the front parsed the body before), or a bracket.
_JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSON_TOKEN = re.compile(rb"%s|[{}\[\]]" % _JSON_STRING, re.DOTALL)
_JSON_STRING_AT = re.compile(_JSON_STRING, re.DOTALL)
_JSON_WHITESPACE = b" \t\r\n"
_MODEL_KEY = "model"

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
# `\b` keeps `filename=` from passing for `name=`.
_PART_NAME = re.compile(rb'\bname\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.IGNORECASE)
_CONTENT_DISPOSITION = b"content-disposition:"
_HEAD_END = b"\r\n\r\n"


def json_model_span(body: bytes) -> Span | None:
    """The span of the string value of the top-level `"model"` key of a valid JSON object
    (quotes included), or None if it has none or its value is not a string. As JSON parsers do
    (orjson included), a key written with escapes counts, and the last duplicate wins; keys of
    nested objects never count."""
    found: Span | None = None
    depth = 0
    for token in _JSON_TOKEN.finditer(body):
        first = body[token.start()]
        if first in b"{[":
            depth += 1
        elif first in b"}]":
            depth -= 1
        elif depth == 1:
            value_at = _after_colon(body, token.end())
            if value_at is not None and _is_model_key(token.group()):
                value = _JSON_STRING_AT.match(body, value_at)
                found = None if value is None else value.span()
    return found


def _after_colon(body: bytes, position: int) -> int | None:
    """Where the value starts if the string ending at `position` is a key (a colon follows)."""
    length = len(body)
    while position < length and body[position] in _JSON_WHITESPACE:
        position += 1
    if position == length or body[position] != ord(":"):
        return None
    position += 1
    while body[position] in _JSON_WHITESPACE:
        position += 1
    return position


def _is_model_key(token: bytes) -> bool:
    if b"\\" not in token:
        return token == b'"model"'
    return bool(orjson.loads(token) == _MODEL_KEY)


def json_model_value(model: str) -> bytes:
    """`model` as a JSON string token, to splice into a JSON body."""
    return orjson.dumps(model)


def form_boundary(content_type: bytes | None) -> bytes | None:
    """The boundary of a multipart/form-data `Content-Type`, or None if it is not one."""
    if content_type is None:
        return None
    text = content_type.decode("latin-1")
    if text.partition(";")[0].strip().lower() != "multipart/form-data":
        return None
    found = _BOUNDARY.search(text)
    if found is None:
        return None
    return (found.group(1) or found.group(2)).encode("latin-1")


def form_model_span(body: bytes, boundary: bytes) -> Span | None:
    """The span of the value of the first part named `model` in a multipart/form-data body,
    or None if there is none. Only part heads are parsed; a file part is skipped over by
    looking for the next delimiter, never copied."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    while position != -1:
        head_start = position + len(delimiter)
        if body.startswith(b"--", head_start):  # the close delimiter
            return None
        head_end = body.find(_HEAD_END, head_start)
        if head_end == -1:
            return None
        value_start = head_end + len(_HEAD_END)
        next_delimiter = body.find(b"\r\n" + delimiter, value_start)
        if next_delimiter == -1:
            return None
        if _part_name(body[head_start:head_end]) == b"model":
            return value_start, next_delimiter
        position = next_delimiter + 2
    return None


def _part_name(head: bytes) -> bytes | None:
    """The `name` parameter of a part head's Content-Disposition."""
    for line in head.split(b"\r\n"):
        if line[: len(_CONTENT_DISPOSITION)].lower() == _CONTENT_DISPOSITION:
            found = _PART_NAME.search(line, len(_CONTENT_DISPOSITION))
            if found is not None:
                return found.group(1) if found.group(1) is not None else found.group(2)
    return None


def form_model(body: bytes, boundary: bytes) -> tuple[str | None, Span | None]:
    """The `model` field of a multipart/form-data body as text (None if absent or not UTF-8),
    and its span."""
    span = form_model_span(body, boundary)
    if span is None:
        return None, None
    try:
        return body[span[0] : span[1]].decode("utf-8"), span
    except UnicodeDecodeError:
        return None, span


def with_model(body: bytes, span: Span, value: bytes) -> bytes:
    """`body` with the bytes at `span` replaced by `value`: one copy, the one splice."""
    start, end = span
    return b"".join((body[:start], value, body[end:]))
