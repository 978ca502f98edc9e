"""Which browser origins may call the public API, and the CORS headers that tell the browser so.

The HTTP front asks `CorsPolicy.allows` about a request's `Origin` (an exact match against
`--cors-origins`) and, for an allowed one, answers a preflight with `preflight_headers` and adds
`response_headers` to every other answer. A request from any other origin gets no CORS header at
all, so the browser keeps its script from reading the answer. The allowed origin is echoed,
never `*`, and credentials (cookies) are never allowed: clients authenticate with a key header.
"""

import re
from collections.abc import Iterable

from sopy.protocol.events import Header

# The methods of the public routes; a preflight for another one fails in the browser.
ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"
# Long enough to spare a preflight per request, short enough for a changed list to take hold.
PREFLIGHT_MAX_AGE_SECONDS = 600
# What a script may read of an answer besides the safelisted headers.
EXPOSED_HEADERS = (
    b"x-request-id, x-upstream-request-id, retry-after, openai-processing-ms, openai-version, "
    b"x-ratelimit-limit-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, "
    b"x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, x-ratelimit-reset-tokens, "
    b"request-id"
)
# A list of header names, as `Access-Control-Request-Headers` carries it.
_HEADER_NAMES = re.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*"
)


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origin.encode("ascii") for origin in origins)

    def allows(self, origin: bytes | None) -> bool:
        return origin in self._origins

    def response_headers(self, origin: bytes) -> tuple[Header, ...]:
        """What an answer to an allowed origin carries."""
        return (
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
            (b"vary", b"Origin"),
        )

    def preflight_headers(self, origin: bytes, requested_headers: bytes | None) -> list[Header]:
        """The answer to an allowed origin's preflight: any method of the API, and the headers
        it asked to send (its own SDK's included), for `PREFLIGHT_MAX_AGE_SECONDS`."""
        headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-max-age", b"%d" % PREFLIGHT_MAX_AGE_SECONDS),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        if requested_headers is not None:
            names = requested_headers.strip()
            if _HEADER_NAMES.fullmatch(names):
                headers.append((b"access-control-allow-headers", names))
        return headers
