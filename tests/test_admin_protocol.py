"""The admin socket's JSON-lines protocol under good and bad input."""

import orjson

from tests.admin_connection import AdminConnection
from tests.conftest import SopyUnderTest


async def test_many_commands_on_one_connection_are_answered_in_order(
    admin: AdminConnection,
) -> None:
    lines = b"".join(
        orjson.dumps({"command": "add_backend", "provider": f"p{i}", "url": f"http://h{i}"}) + b"\n"
        for i in range(20)
    )
    await admin.send_raw(lines)
    replies = [await admin.read_reply() for _ in range(20)]
    assert [r["result"]["provider"] for r in replies] == [f"p{i}" for i in range(20)]


async def test_request_id_is_echoed(admin: AdminConnection) -> None:
    reply = await admin.call("list_backends", id="req-7")
    assert reply == {"id": "req-7", "ok": True, "result": []}
    failed = await admin.call("get_backend", provider="nope", id=8)
    assert failed["id"] == 8
    assert failed["ok"] is False


async def test_bad_json_gets_an_error_and_the_connection_stays_usable(
    admin: AdminConnection,
) -> None:
    await admin.send_raw(b"{not json\n")
    reply = await admin.read_reply()
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_json"

    assert await admin.ok("list_backends") == []


async def test_unknown_command_and_bad_fields_name_the_problem(admin: AdminConnection) -> None:
    unknown = await admin.error("drop_everything")
    assert unknown["code"] == "unknown_command"
    assert "add_backend" in unknown["message"]

    missing = await admin.error("add_backend", provider="openai")
    assert missing == {
        "code": "invalid_field",
        "message": "add_backend needs field 'url'",
        "field": "url",
    }

    wrong_type = await admin.error("get_user_api_key", id="1")
    assert wrong_type["field"] == "id"
    assert "integer" in wrong_type["message"]

    extra = await admin.error("list_backends", verbose=True)
    assert extra["field"] == "verbose"

    await admin.send_raw(b'["add_backend"]\n')
    assert (await admin.read_reply())["error"]["code"] == "invalid_request"


async def test_huge_line_is_refused_and_the_connection_stays_usable(
    admin: AdminConnection,
) -> None:
    huge = b'{"command": "list_backends", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}\n'
    await admin.send_raw(huge)
    reply = await admin.read_reply()
    assert reply["ok"] is False
    assert reply["error"]["code"] == "payload_too_large"

    assert await admin.ok("list_backends") == []


async def test_a_bad_client_does_not_affect_other_connections(sopy: SopyUnderTest) -> None:
    async with await sopy.admin() as rude, await sopy.admin() as polite:
        await rude.send_raw(b"\xff\xfe garbage\n")
        assert (await rude.read_reply())["error"]["code"] == "invalid_json"
        await rude.stream.aclose()
        assert await polite.ok("list_model_mappings") == []
