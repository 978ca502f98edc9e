"""HTTP/1.1 and line framing as a small library: bytes in, events out, for the public server and the
upstream client. It knows nothing of OpenAI, messages, actors or the rest of Sopy; an import
contract (pyproject.toml, `lint-imports`) keeps it so."""
