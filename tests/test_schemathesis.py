"""Schemathesis against a live Sopy's `/openapi.json` (the public operations; the admin ones are
served on the Unix socket, which schemathesis cannot reach).

Every check runs except `negative_data_rejection`: Sopy checks only the request fields it acts on
(`model`, `stream`, `stream_options`) and passes the rest of the body through unchanged, so a
malformed `messages` is the provider's to refuse, by design. A request Sopy translates for a
provider of another kind is read whole, though, and refused with a 400 naming the field when it
is malformed or uses what the provider's format cannot express: on the Messages operations,
whose model `gpt-4.1` is mapped first to an OpenAI provider, schema-valid data may be a 400
(`MESSAGES_CONFIG`); not a 5xx. The Responses API's WebSocket mode
(`GET /v1/responses` with an upgrade) is left out: schemathesis speaks no WebSocket
(tests/test_responses_websocket.py covers it). Every warning is shown except `missing_test_data`:
a made-up response id is a 404 by design (tests/test_response_affinity.py), and the generated
calls that create a response lead to its follow-ups through the document's links.
"""

import os
import sys
from pathlib import Path

import trio
from schemathesis.config import SchemathesisWarning

from sopy.testing.mock_upstream import MockUpstream
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, make_anthropic, start_gateway_with

EXAMPLES = os.environ.get("SOPY_FUZZ_EXAMPLES", "25")
# The default statuses of `positive_data_acceptance`, and 400 for the translated operations.
MESSAGES_CONFIG = """
[[operations]]
include-operation-id = ["create_message", "count_message_tokens"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx",
]
"""
WARNINGS = ",".join(
    warning.value
    for warning in SchemathesisWarning
    if warning is not SchemathesisWarning.MISSING_TEST_DATA
)


async def test_schemathesis_finds_no_issue_in_the_public_api(
    sopy: SopyUnderTest, nursery: trio.Nursery, workdir: Path
) -> None:
    # The mock serves both APIs; `claude` is gpt-4.1's fallback, of kind anthropic.
    upstreams = {"openai": [MockUpstream("openai-0")], "claude": [MockUpstream("claude-0")]}
    gateway = await start_gateway_with(
        sopy, nursery, upstreams, {"gpt-4.1": "openai"}, fallbacks={"gpt-4.1": ["claude"]}
    )
    await make_anthropic(gateway, "claude")
    schemathesis = Path(sys.executable).with_name("schemathesis")
    config = workdir / "schemathesis.toml"
    config.write_text(MESSAGES_CONFIG)
    result = await trio.run_process(
        [
            str(schemathesis),
            "--config-file",
            str(config),
            "run",
            f"{gateway.root_url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection",
            "--exclude-tag",
            "admin",
            "--exclude-operation-id",
            "responses_websocket",
            "--warnings",
            WARNINGS,
            "--max-examples",
            EXAMPLES,
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {USER_KEY}",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=workdir,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    report = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, report
    assert "No issues found" in report, report
