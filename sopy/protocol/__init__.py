"""HTTP/1.1 and line framing as a small library: bytes in, events out, for the public server and the
upstream client. It knows nothing of OpenAI, messages, actors or the rest of Sopy; an import
contract (pyproject.toml, `lint-imports`) keeps it so.

- `parser`: sans-IO parsing of requests and responses into the immutable `events`, with head
  limits in both directions; `errors`: the layer's exceptions (`HttpError`, `ProtocolError`).
- `wire`: responses framed as bytes; `headers`: looking up parsed header values.
- `server`: the public HTTP/1.1 server over trio; `client`: the upstream keep-alive client.
- `line_reader`, `replay_stream`: the admin socket's framing.

Not goals: TLS and HTTP/2 on the server (put a terminating proxy in front), egress proxies in the
client (backends are reached directly).
"""
