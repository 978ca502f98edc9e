"""The bundled mock upstream, under the name its importers know; it lives in `sopy.testing.mock`."""

from sopy.testing.mock import (
    MODEL_ID,
    FormPart,
    MockUpstream,
    RandomFault,
    ReceivedRequest,
    run_mock_upstream,
)

__all__ = [
    "MODEL_ID",
    "FormPart",
    "MockUpstream",
    "RandomFault",
    "ReceivedRequest",
    "run_mock_upstream",
]
