"""The HTTP plumbing every route of the mock upstream shares: what a request was, how an answer
is sent, and how bodies are read (JSON, multipart/form-data).

`MockUpstream` (in `server`) records each request as a `ReceivedRequest` and answers through one
`MockResponse`; the route modules (`chat`, `openai_routes`, `responses`, `anthropic`) only build
payloads and call `MockResponse`. A route refuses a request by raising `RouteError`, which the
server turns into the error body of the route's API family (OpenAI's or Anthropic's shape).
"""

import email.parser
import email.policy
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import orjson
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

Headers = Sequence[tuple[bytes, bytes]]


@attrs.frozen
class ReceivedRequest:
    """One request as the mock upstream received it: tests check what the gateway forwarded."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""

    def json(self) -> Any:
        return orjson.loads(self.body)

    def form(self) -> dict[str, "FormPart"]:
        """The parts of a multipart/form-data body by field name; RouteError if it is not one."""
        return parse_multipart(self.headers.get("content-type", ""), self.body)


@attrs.frozen
class FormPart:
    """One field of a multipart/form-data body: a file when it has a filename."""

    value: bytes
    filename: str | None
    content_type: str | None

    @property
    def text(self) -> str:
        return self.value.decode()


class RouteError(Exception):
    """A request the route refuses: answered with `status` in the route family's error shape.

    `error_type` is the family's own word (`invalid_request_error`, `not_found_error`...);
    `param` and `code` only appear in OpenAI's shape.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Headers = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers


class MockResponse:
    """Sends one ASGI response and remembers whether it ended on purpose.

    Hypercorn reports `http.disconnect` after every response, so only a disconnect that arrives
    before the response ended counts as the client going away. Every response names the mock in
    `x-mock-upstream` and carries a request id in the header the API family uses
    (`x-request-id` for OpenAI, `request-id` for Anthropic), as the real providers do.
    """

    def __init__(self, send: ASGISendCallable, upstream_name: str, request_id: str) -> None:
        self._send = send
        self._identity = [(b"x-mock-upstream", upstream_name.encode())]
        self.request_id = request_id
        self.request_id_header = b"x-request-id"
        self.ended = False

    async def start(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        identity = [*self._identity, (self.request_id_header, self.request_id.encode())]
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), *identity, *headers],
            }
        )

    async def send_part(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes = b"") -> None:
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def abandon(self) -> None:
        """End without completing the body; hypercorn then closes the connection mid-message."""
        self.ended = True

    async def whole(
        self, status: int, content_type: bytes, data: bytes, headers: Headers = ()
    ) -> None:
        length = (b"content-length", str(len(data)).encode())
        await self.start(status, content_type, [*headers, length])
        await self.finish(data)

    async def json(self, status: int, payload: object, headers: Headers = ()) -> None:
        await self.whole(status, b"application/json", orjson.dumps(payload), headers)


async def read_body(receive: ASGIReceiveCallable) -> bytes | None:
    """The whole request body, or None if the client left before sending it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            parts.append(message["body"])
            if not message["more_body"]:
                return b"".join(parts)


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 RouteError saying why it is not one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RouteError(400, "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise RouteError(400, "The request body must be a JSON object.")
    return payload


def parse_multipart(content_type: str, body: bytes) -> dict[str, FormPart]:
    """The fields of a multipart/form-data body, parsed by the standard library's MIME parser."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise RouteError(400, "This route takes multipart/form-data.")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise RouteError(400, "The multipart/form-data body could not be parsed.")
    fields: dict[str, FormPart] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = FormPart(
            value=payload if isinstance(payload, bytes) else b"",
            filename=part.get_filename(),
            content_type=part.get_content_type() if part.get("content-type") else None,
        )
    return fields


def required_string(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise RouteError(400, f"'{name}' must be a string.", param=name)
    return value


def sse_event(payload: dict[str, Any], *, event: str | None = None) -> bytes:
    """One server-sent event; `event:` named as OpenAI's Responses and Anthropic send it."""
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_error_body(error: RouteError) -> dict[str, Any]:
    error_type = error.error_type or _openai_error_type(error.status)
    code = error.code
    if code is None and error.status == 429:
        code = "rate_limit_exceeded"
    return {
        "error": {"message": error.message, "type": error_type, "param": error.param, "code": code}
    }


def _openai_error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def anthropic_error_body(error: RouteError, request_id: str) -> dict[str, Any]:
    error_type = error.error_type or _ANTHROPIC_ERROR_TYPES.get(
        error.status, "api_error" if error.status >= 500 else "invalid_request_error"
    )
    return {
        "type": "error",
        "error": {"type": error_type, "message": error.message},
        "request_id": request_id,
    }


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
