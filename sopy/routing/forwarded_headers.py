"""Which HTTP headers cross the gateway, in each direction. Each side applies the rule for its
own peer: the upstream pool calls `upstream_request_headers` (what the backend sees), the HTTP
front's relay calls `client_response_headers` (what the client sees).

Client → upstream: everything but hop-by-hop headers, the client's own credentials and headers
that the upstream connection sets itself; then the provider credential, in the header its kind
takes (`sopy.provider_kinds`), and the kind's default headers the client did not send.
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
from sopy.protocol.headers import connection_options
from sopy.provider_kinds import DEFAULT_PROVIDER_KIND, PROVIDER_KINDS, ProviderKind

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
# The backend's x-request-id is not relayed as such: it is renamed (Sopy's own goes out as it).
_NOT_RELAYED = _HOP_BY_HOP | {b"date", b"server", b"content-length", b"x-request-id"}
_UPSTREAM_REQUEST_ID = b"x-request-id"
UPSTREAM_REQUEST_ID_FOR_CLIENT = b"x-upstream-request-id"
_STREAMED_TYPES = (b"text/event-stream", b"audio/")


def upstream_request_headers(
    client_headers: Sequence[Header], credential: str | None, kind: str = DEFAULT_PROVIDER_KIND
) -> list[Header]:
    """Headers to send upstream: the client's that may cross, then the provider's credential
    in the form its `kind` takes, then the kind's default headers that the client did not send.

    The client's accept-encoding is passed on as is (or `identity`), because the body is relayed
    byte for byte: the client must be able to decode whatever the upstream chose.
    """
    # One pass (this runs for every request): only the few dropped headers get a second look.
    kept: list[Header] = []
    encoding: bytes | None = None
    lists_options = False
    for header in client_headers:
        name = header[0]
        if name not in _NOT_FORWARDED:
            kept.append(header)
        elif name == b"accept-encoding":
            if encoding is None:
                encoding = header[1]
        elif name == b"connection" and header[1] != b"keep-alive":
            lists_options = True
    if lists_options:
        kept = _without_options(kept, client_headers, _NOT_FORWARDED)
    kept.append((b"accept-encoding", b"identity" if encoding is None else encoding))
    provider_kind = PROVIDER_KINDS[kind]
    if credential is not None:
        kept.append(credential_header(credential, provider_kind))
    for default in provider_kind.default_headers:
        if all(header[0] != default[0] for header in kept):
            kept.append(default)
    return kept


def credential_header(credential: str, kind: ProviderKind) -> Header:
    """The provider credential in the header, and the form, that its `kind` takes."""
    return kind.credential_header, f"{kind.credential_prefix}{credential}".encode()


def client_response_headers(upstream_headers: Sequence[Header]) -> list[Header]:
    """The backend's response headers that the client may see (names are lower case, as
    parsed), the backend's request id under the name `x-upstream-request-id`."""
    kept: list[Header] = []
    lists_options = False
    for header in upstream_headers:
        name = header[0]
        if name not in _NOT_RELAYED:
            kept.append(header)
        elif name == _UPSTREAM_REQUEST_ID:
            kept.append((UPSTREAM_REQUEST_ID_FOR_CLIENT, header[1]))
        elif name == b"connection" and header[1] != b"keep-alive":
            lists_options = True
    if lists_options:
        kept = _without_options(kept, upstream_headers, _NOT_RELAYED)
    return kept


def _without_options(
    kept: list[Header], headers: Sequence[Header], dropped: frozenset[bytes]
) -> list[Header]:
    """`kept` without the headers that `headers`' Connection lists. Only called when a
    Connection header lists more than `keep-alive` (which is always dropped): the common
    `Connection: keep-alive` costs no parsing of options."""
    listed = connection_options(headers)
    return kept if listed <= dropped else [h for h in kept if h[0] not in listed]


def upstream_request_id(client_headers: Iterable[Header]) -> bytes | None:
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
        name == b"content-type" and value.startswith(_STREAMED_TYPES) for name, value in headers
    )
