"""Property-based fuzzing with hypothesis against a live Sopy: the admin JSON protocol and the
public request parsing. Hypothesis runs in a worker thread with blocking clients while the
gateway serves from the test's trio loop.

Always asserted: no 5xx from Sopy itself, no crash, the server still answers afterwards and the
database passes `PRAGMA integrity_check`. CI runs a bounded number of examples; set
SOPY_FUZZ_EXAMPLES for a longer run (see README).
"""

import os
import socket
import sqlite3
from typing import Any

import httpx
import orjson
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sopy.messages import ADMIN_COMMANDS
from tests.conftest import SopyUnderTest
from tests.gateway import USER_KEY, Gateway, start_gateway

EXAMPLES = int(os.environ.get("SOPY_FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
ADMIN_ERROR_CODES = {
    "invalid_json",
    "invalid_request",
    "invalid_field",
    "unknown_command",
    "not_found",
    "conflict",
    "payload_too_large",
}
FIELD_NAMES = sorted(
    {name for cls in ADMIN_COMMANDS.values() for name in cls.__attrs_attrs__.__dir__()}
    | {"id", "name", "credentials", "api_key", "url", "provider", "model_name", "weight"}
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
admin_objects = st.fixed_dictionaries(
    {"command": st.sampled_from([*ADMIN_COMMANDS, "drop_tables", ""])},
    optional={name: json_values for name in FIELD_NAMES},
)
admin_lines = st.one_of(
    admin_objects.map(orjson.dumps),
    json_values.map(orjson.dumps),
    st.binary(max_size=120),
).filter(lambda line: b"\n" not in line and line.strip() != b"")


async def test_fuzzed_admin_lines_always_get_a_clean_reply(sopy: SopyUnderTest) -> None:
    path = str(sopy.settings.admin_socket)

    def fuzz() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            replies = conn.makefile("rb")

            @FUZZ_SETTINGS
            @given(admin_lines)
            def each_line_gets_one_clean_reply(line: bytes) -> None:
                conn.sendall(line + b"\n")
                reply = orjson.loads(replies.readline())
                assert reply["ok"] in (True, False)
                if not reply["ok"]:
                    assert reply["error"]["code"] in ADMIN_ERROR_CODES, reply

            each_line_gets_one_clean_reply()

    await trio.to_thread.run_sync(fuzz)
    await _still_healthy(sopy)


chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["gpt-4.1", "unknown-model"]), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}),
                max_size=2,
            ),
            json_values,
        ),
        "stream": json_values,
        "stream_options": json_values,
        "temperature": json_values,
    },
)
public_bodies = st.one_of(
    chat_bodies.map(orjson.dumps), json_values.map(orjson.dumps), st.binary(max_size=200)
)
# httpx itself refuses header values with surrounding spaces, so generate none.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


async def test_fuzzed_public_requests_never_get_a_5xx_from_sopy(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    gateway: Gateway = await start_gateway(sopy, nursery, {"gpt-4.1": "openai"})
    url = gateway.base_url + "/chat/completions"

    def fuzz() -> None:
        with httpx.Client(timeout=10) as client:

            @FUZZ_SETTINGS
            @given(public_bodies, header_values, st.booleans())
            def each_request_is_answered_cleanly(
                body: bytes, content_type: str, authorised: bool
            ) -> None:
                headers = {"content-type": content_type}
                if authorised:
                    headers["authorization"] = f"Bearer {USER_KEY}"
                response = client.post(url, content=body, headers=headers)
                assert response.status_code < 500, response.text
                _assert_openai_shaped(response.status_code, response.content)

            each_request_is_answered_cleanly()

    await trio.to_thread.run_sync(fuzz)
    await _still_healthy(sopy)


def _assert_openai_shaped(status: int, content: bytes) -> None:
    if content.startswith(b"data: "):
        return
    payload: Any = orjson.loads(content)
    if status >= 400:
        assert set(payload["error"]) == {"message", "type", "param", "code"}
    else:
        assert payload["object"] == "chat.completion"


async def _still_healthy(sopy: SopyUnderTest) -> None:
    async with await sopy.admin() as admin:
        await admin.ok("list_backends")
    with sqlite3.connect(sopy.settings.db_path) as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
