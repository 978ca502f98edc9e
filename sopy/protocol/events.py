"""The immutable events `sopy.protocol.parser` turns bytes into, in both directions: a message's
head (`Request` or `Response`), its body as `Data` pieces, then `EndOfMessage`. Header names are
lower case and values have no surrounding whitespace, as in h11's events.

The events a parser makes for every message are named tuples: immutable, and built in a third
of the time a frozen attrs class takes (the parsers make two or three per request).
"""

from typing import NamedTuple

import attrs

Header = tuple[bytes, bytes]


class Request(NamedTuple):
    """A request head. `keep_alive` is False when the connection must close after the answer
    (HTTP/1.0, `Connection: close`, a protocol upgrade); `expects_continue` when an HTTP/1.1
    client waits for `100 Continue` before sending its body."""

    method: bytes
    target: bytes
    headers: tuple[Header, ...]
    http_version: bytes
    keep_alive: bool
    expects_continue: bool


class Response(NamedTuple):
    """A response head; interim (1xx) answers are `Response`s too, each followed by its own
    `EndOfMessage`. `keep_alive` is False when the connection cannot carry another exchange."""

    status: int
    headers: tuple[Header, ...]
    http_version: bytes
    keep_alive: bool


class Data(NamedTuple):
    """A piece of a message body, transfer framing removed."""

    data: bytes


@attrs.frozen
class EndOfMessage:
    """The message's body is complete (trailers are read and dropped)."""


END_OF_MESSAGE = EndOfMessage()

Event = Request | Response | Data | EndOfMessage
