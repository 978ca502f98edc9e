"""Client-supplied text made safe for a log line: `loggable` escapes what could forge a line or
a field (newlines, terminal escape sequences, other unprintable characters, spaces and quotes)
and caps the length, so a request cannot write its own log lines or flood the log.

Used wherever a log line quotes something a client sent (the access log's model, the detail of
a failure that may echo a client header).
"""

import re

MAX_LOGGED_CHARS = 200
# A space or a quote could make a value look like more than one `key=value` field.
_NEEDS_QUOTING = re.compile(r"[\s\"'\\]")


def loggable(value: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`value` as is when it is short, printable and one word; else quoted with Python's escapes
    (which cover C0 and C1 controls, DEL, line and paragraph separators), cut to `limit`
    characters and followed by how many were left out."""
    if len(value) <= limit and value.isprintable() and not _NEEDS_QUOTING.search(value):
        return value
    shown = repr(value[:limit])
    return shown if len(value) <= limit else f"{shown}...(+{len(value) - limit} chars)"
