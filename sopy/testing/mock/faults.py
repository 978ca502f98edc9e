"""The misbehaviour a request can ask the mock upstream for, and its random failure mode.

A request asks through an optional `"mock"` object in its JSON body, which the gateway forwards
unchanged: an error status (with `retry_after`, a number or any header text), delays before the
headers or between streamed events, longer streams (`chunks`), a connection dropped mid-stream
(`reset_after`), and hostile sizes: a body of `body_bytes` (announced by Content-Length unless
`length_unknown`) or a stream whose one line never ends (`endless_line_bytes`). Every JSON route
honours `status`, `retry_after` and `headers_delay`; chat completions honour all of them.
`RandomFault` names what the server-wide random failure mode draws for chat completions.

The same object may come as the `x-mock-faults` header instead (JSON text), for a request whose
body a gateway rewrites, as Sopy does when it translates between wire formats; the header wins.
"""

import enum
from typing import Any

import attrs
import orjson
from attrs import validators

from sopy.testing.mock.http import Headers, RouteError


class RandomFault(enum.StrEnum):
    """The ways the random failure mode makes a chat completion fail, named as in `injected`.

    `status_500` and `status_503` are OpenAI-shaped server errors and `status_429` a rate limit
    with `retry-after: 0`. `reset` sends the headers of a 200 (and, when streaming, the first
    event) and then closes the connection mid-body, which httpx reports as `RemoteProtocolError`
    ("incomplete chunked read"). `hang` holds back the headers for `hang_seconds`, then answers
    normally if the client is still waiting.
    """

    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    STATUS_429 = "status_429"
    RESET = "reset"
    HANG = "hang"


def _non_negative_number() -> list[Any]:
    return [validators.instance_of((int, float)), validators.ge(0)]


def _retry_after_value(_instance: object, _attribute: object, value: Any) -> None:
    """A number of seconds, or any header text (sent as latin-1 bytes, for hostile values)."""
    if value is None:
        return
    if isinstance(value, str):
        value.encode("latin-1")  # a UnicodeEncodeError is a ValueError, reported as such
    elif not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"'retry_after' must be a non-negative number or a string, not {value!r}")


def _integer_at_least(minimum: int, *, at_most: int | None = None) -> list[Any]:
    bounds = [validators.ge(minimum)] + ([] if at_most is None else [validators.le(at_most)])
    return [validators.instance_of(int), *bounds]


@attrs.frozen(kw_only=True)
class Faults:
    """The misbehaviour a request asked for in its `"mock"` object."""

    status: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(400, at_most=599))
    )
    retry_after: float | str | None = attrs.field(default=None, validator=_retry_after_value)
    headers_delay: float = attrs.field(default=0.0, validator=_non_negative_number())
    chunk_delay: float = attrs.field(default=0.0, validator=_non_negative_number())
    chunks: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(1))
    )
    reset_after: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )
    body_bytes: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )
    length_unknown: bool = attrs.field(default=False, validator=validators.instance_of(bool))
    endless_line_bytes: int | None = attrs.field(
        default=None, validator=validators.optional(_integer_at_least(0))
    )


NO_FAULTS = Faults()
FAULTS_HEADER = "x-mock-faults"


def parse_faults(raw: object) -> Faults:
    if raw is None:
        return NO_FAULTS
    if not isinstance(raw, dict):
        raise RouteError(400, "'mock' must be an object.")
    try:
        return Faults(**raw)
    except (TypeError, ValueError) as error:
        raise RouteError(400, f"Invalid 'mock' object: {error}") from None


def requested_faults(headers: dict[str, str], body_faults: object) -> Faults:
    """The faults a request asks for: its `x-mock-faults` header's, else its body's `mock`."""
    header = headers.get(FAULTS_HEADER)
    if header is None:
        return parse_faults(body_faults)
    try:
        return parse_faults(orjson.loads(header))
    except orjson.JSONDecodeError:
        raise RouteError(400, f"'{FAULTS_HEADER}' must be a JSON object.") from None


def faults_acting_out(fault: RandomFault, hang_seconds: float) -> Faults:
    """The per-request faults that produce a random fault (all but a non-streaming reset)."""
    match fault:
        case RandomFault.STATUS_500:
            return Faults(status=500)
        case RandomFault.STATUS_503:
            return Faults(status=503)
        case RandomFault.STATUS_429:
            # A zero wait tells a gateway it may retry at once, on another upstream.
            return Faults(status=429, retry_after=0)
        case RandomFault.RESET:
            return Faults(reset_after=1)
        case RandomFault.HANG:
            return Faults(headers_delay=hang_seconds)


def retry_after_header(value: float | str | None) -> Headers:
    if value is None:
        return ()
    text = value if isinstance(value, str) else format(value, "g")
    return ((b"retry-after", text.encode("latin-1")),)
