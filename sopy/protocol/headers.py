"""Looking up header values in parsed HTTP headers (names lower case, as both parsers give them)."""

from collections.abc import Iterable


def first_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case, as parsed), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def connection_options(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a message's `Connection` headers list (lower case): hop-by-hop
    headers of that one connection, never forwarded (RFC 9110 7.6.1)."""
    options = _NONE
    for name, value in headers:
        if name == b"connection":
            options = options.union([token.strip().lower() for token in value.split(b",")])
    return options - _EMPTY_TOKEN


_NONE: frozenset[bytes] = frozenset()
_EMPTY_TOKEN = frozenset({b""})
