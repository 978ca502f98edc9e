"""The bundled mock upstream provider: one module per API family, the server in `server`.

`chat` (chat completions), `openai_routes` (completions, embeddings, moderations, images,
audio), `responses` (the Responses API and its WebSocket mode), `anthropic` (Messages),
`faults` (what a request may ask to go wrong), `text` (the deterministic content), `http` (the
plumbing they share). Tests, demos, benchmarks and `sopy mock-upstream` use `MockUpstream`.
"""

from sopy.testing.mock.faults import RandomFault
from sopy.testing.mock.http import FormPart, ReceivedRequest
from sopy.testing.mock.server import MODEL_ID, MockUpstream, run_mock_upstream

__all__ = [
    "MODEL_ID",
    "FormPart",
    "MockUpstream",
    "RandomFault",
    "ReceivedRequest",
    "run_mock_upstream",
]
