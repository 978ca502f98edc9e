"""The HTTP layer's exceptions: `HttpError` is the base of everything `sopy.protocol` raises, so a
caller maps this layer's failures once, at its edge (as httpcore's exception tree does).

`ProtocolError` says the bytes broke HTTP/1.1 or a size limit, and carries the status to answer
with: 4xx/5xx for a request Sopy was sent, 502 for a response a backend sent. The server and the
client add their own subclasses of `HttpError` for what happens on a connection.
"""


class HttpError(Exception):
    """Base of every error the HTTP layer raises."""


class ProtocolError(HttpError):
    """The peer's bytes are not an HTTP/1.1 message Sopy accepts; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
