"""Which HTTP headers cross the gateway, in each direction. Each side applies the rule for its
own peer: the upstream pool calls `upstream_request_headers` (what the backend sees), the HTTP
front's relay calls `client_response_headers` (what the client sees).

Client → upstream: everything but hop-by-hop headers, the client's own credentials and headers
that the upstream connection sets itself; then the provider credential.
Upstream → client: everything but hop-by-hop headers and those the HTTP server sets itself (`date`,
`server`); `content-length` is dropped so a body that breaks off can never look complete. The
backend's own `x-request-id` reaches the client as `x-upstream-request-id`, since `x-request-id`
is Sopy's id for the request.
Client → upstream includes what selects an account or an API version at the provider
(`OpenAI-Organization`, `OpenAI-Project`, `OpenAI-Beta`, `anthropic-beta`, `anthropic-version`)
and `Idempotency-Key`, so that a retried request is still recognised upstream.
Hop-by-hop are the fixed ones below and, both ways, those the message's `Connection` lists.
"""

from collections.abc import Iterable, Sequence

from sopy.protocol.events import Header
from sopy.protocol.headers import connection_options, first_value

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"api-key",
    b"x-api-key",
    b"cookie",
    b"accept-encoding",
    b"expect",
}
_NOT_RELAYED = _HOP_BY_HOP | {b"date", b"server", b"content-length"}
_UPSTREAM_REQUEST_ID = b"x-request-id"
UPSTREAM_REQUEST_ID_FOR_CLIENT = b"x-upstream-request-id"


def upstream_request_headers(
    client_headers: Sequence[tuple[bytes, bytes]], credential: str | None
) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream: the client's that may cross, then the provider's credential.

    The client's accept-encoding is passed on as is (or `identity`), because the body is relayed
    byte for byte: the client must be able to decode whatever the upstream chose.
    """
    listed = connection_options(client_headers)
    dropped = _NOT_FORWARDED if listed <= _NOT_FORWARDED else _NOT_FORWARDED | listed
    kept = [(name, value) for name, value in client_headers if name not in dropped]
    encoding = first_value(client_headers, b"accept-encoding")
    kept.append((b"accept-encoding", b"identity" if encoding is None else encoding))
    if credential is not None:
        kept.append((b"authorization", f"Bearer {credential}".encode()))
    return kept


def client_response_headers(upstream_headers: Sequence[tuple[bytes, bytes]]) -> list[Header]:
    """The backend's response headers that the client may see (names are lower case, as
    parsed), its request id renamed."""
    listed = connection_options(upstream_headers)
    dropped = _NOT_RELAYED if listed <= _NOT_RELAYED else _NOT_RELAYED | listed
    return [
        (UPSTREAM_REQUEST_ID_FOR_CLIENT if name == _UPSTREAM_REQUEST_ID else name, value)
        for name, value in upstream_headers
        if name not in dropped
    ]


def upstream_request_id(client_headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The backend's id for the request among the headers the client gets: OpenAI's
    (renamed) or Anthropic's `request-id`."""
    for name, value in client_headers:
        if name in (UPSTREAM_REQUEST_ID_FOR_CLIENT, b"request-id"):
            return value
    return None


def is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )


def is_streamed(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an answer is relayed as it arrives rather than read whole first: event streams,
    and audio (speech), which a player starts on its first bytes."""
    return any(
        name == b"content-type"
        and (value.startswith(b"text/event-stream") or value.startswith(b"audio/"))
        for name, value in headers
    )
