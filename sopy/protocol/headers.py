"""Looking up header values in parsed HTTP headers (names lower case, as both parsers give them)."""

from collections.abc import Iterable


def first_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case, as parsed), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
