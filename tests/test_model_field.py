"""`sopy.routing.model_field`: the top-level `model` of any JSON object, however written, and the
`model` field of any multipart/form-data body, located exactly and replaced in place.

JSON is checked against orjson (what the front parses with) on arbitrary objects serialised with
arbitrary whitespace and escaping, duplicate keys and nested `model` keys included.
"""

import random
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sopy.routing.model_field import (
    form_boundary,
    form_model,
    json_model_span,
    json_model_value,
    with_model,
)
from sopy.testing.mock.http import parse_multipart

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
_WHITESPACE = " \t\r\n"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(
            st.tuples(st.sampled_from(["model", "Model", "x", "mode"]) | st.text(), children)
        ).map(lambda pairs: _Object(pairs))
    ),
    max_leaves=12,
)
model_values = st.text() | json_scalars | st.lists(st.text(), max_size=2)


class _Object(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, duplicates allowed."""


def _string(text: str, rng: random.Random) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES and (code < 0x20 or char in '"\\' or rng.random() < 0.5):
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or rng.random() < 0.2:
            if code > 0xFFFF:
                high, low = divmod(code - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}")
            else:
                out.append(f"\\u{code:04x}" if rng.random() < 0.5 else f"\\u{code:04X}")
        elif char == "/" and rng.random() < 0.5:
            out.append("\\/")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _space(rng: random.Random) -> str:
    return "".join(rng.choice(_WHITESPACE) for _ in range(rng.choice((0, 0, 1, 3))))


def _dumps(value: Any, rng: random.Random) -> str:
    """`value` as JSON, with whitespace and escapes chosen by `rng`."""
    if isinstance(value, _Object):
        pairs = [
            _space(rng) + _string(key, rng) + _space(rng) + ":" + _space(rng) + _dumps(item, rng)
            for key, item in value
        ]
        return "{" + ",".join(pairs) + _space(rng) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_space(rng) + _dumps(item, rng) for item in value) + _space(rng) + "]"
    if isinstance(value, str):
        return _string(value, rng)
    return orjson.dumps(value).decode()


@settings(max_examples=500, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(["model", "x", "mode", "models"]), json_values)),
    model_at=st.integers(min_value=0),
    model=st.none() | model_values,
    new_model=st.text(),
    rng=st.randoms(use_true_random=False),
)
def test_the_top_level_model_string_is_found_exactly_and_replaced_alone(
    pairs: list[tuple[str, Any]],
    model_at: int,
    model: Any,
    new_model: str,
    rng: random.Random,
) -> None:
    if model is not None:
        pairs.insert(model_at % (len(pairs) + 1), ("model", model))
    body = (_space(rng) + _dumps(_Object(pairs), rng) + _space(rng)).encode()
    parsed = orjson.loads(body)

    span = json_model_span(body)

    if not isinstance(parsed.get("model"), str):
        assert span is None
        return
    assert span is not None
    assert orjson.loads(body[span[0] : span[1]]) == parsed["model"]
    renamed = with_model(body, span, json_model_value(new_model))
    assert orjson.loads(renamed) == {**parsed, "model": new_model}
    assert renamed[: span[0]] == body[: span[0]]
    assert renamed[span[0] + len(json_model_value(new_model)) :] == body[span[1] :]


def test_a_model_key_written_with_escapes_counts_and_nested_ones_do_not() -> None:
    body = b'{"a": {"model": "inner"}, "m\\u006fdel" : "outer", "list": ["model", {"model": 1}]}'
    span = json_model_span(body)
    assert span is not None
    assert body[span[0] : span[1]] == b'"outer"'
    assert json_model_span(b'{"a": {"model": "inner"}}') is None
    assert json_model_span(b'{"model": "first", "model": null}') is None


file_bytes = st.binary(max_size=300) | st.sampled_from(
    [b"\r\n--", b'Content-Disposition: form-data; name="model"\r\n\r\nfake', b"--\r\n"]
)
field_names = st.sampled_from(["file", "language", "prompt", "models", "model_x"])


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(st.tuples(field_names, file_bytes, st.booleans()), unique_by=lambda f: f[0]),
    model_at=st.integers(min_value=0),
    model=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1),
    new_model=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1),
    filename_first=st.booleans(),
)
def test_the_form_model_field_is_found_exactly_and_replaced_alone(
    fields: list[tuple[str, bytes, bool]],
    model_at: int,
    model: str,
    new_model: str,
    filename_first: bool,
) -> None:
    boundary = b"sopy-boundary-0123"
    parts = []
    for name, value, is_file in fields:
        disposition = f'form-data; name="{name}"'
        if is_file:
            filename = 'filename="a.wav"'
            disposition = f'form-data; {filename}; name="{name}"' if filename_first else disposition
            disposition += "" if filename_first else f"; {filename}"
        head = f"Content-Disposition: {disposition}\r\n"
        if is_file:
            head += "Content-Type: audio/wav\r\n"
        parts.append(head.encode() + b"\r\n" + value)
    model_part = b'content-disposition: form-data; name="model"\r\n\r\n' + model.encode()
    parts.insert(model_at % (len(parts) + 1), model_part)
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"

    found, span = form_model(body, boundary)

    assert found == model
    assert span is not None
    renamed = with_model(body, span, new_model.encode())
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    before, after = parse_multipart(content_type, body), parse_multipart(content_type, renamed)
    assert after["model"].text == new_model
    assert {name: part for name, part in after.items() if name != "model"} == {
        name: part for name, part in before.items() if name != "model"
    }


def test_an_httpx_upload_is_read_as_sent() -> None:
    request = httpx.Request(
        "POST",
        "http://sopy/v1/audio/transcriptions",
        data={"language": "en", "model": "whisper-1"},
        files={"file": ("a.wav", b"RIFF\r\n--\r\n" * 100, "audio/wav")},
    )
    body = request.read()
    boundary = form_boundary(request.headers["content-type"].encode())
    assert boundary is not None

    assert form_model(body, boundary)[0] == "whisper-1"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (b"multipart/form-data; boundary=abc", b"abc"),
        (b'Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
        (b"application/json", None),
        (b"multipart/form-data", None),
        (None, None),
    ],
)
def test_the_boundary_comes_from_a_form_content_type_only(
    content_type: bytes | None, boundary: bytes | None
) -> None:
    assert form_boundary(content_type) == boundary


def test_a_form_without_a_model_field_has_none() -> None:
    head = b'Content-Disposition: form-data; filename="model"; name="file"'
    body = b"--b\r\n" + head + b"\r\n\r\nx\r\n--b--\r\n"
    assert form_model(body, b"b") == (None, None)
