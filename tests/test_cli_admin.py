"""`sopy admin` against a running Sopy: readable output, --json, exit codes."""

import subprocess
import sys

import orjson
import trio

from sopy.cli.main import command_payload
from tests.conftest import SopyUnderTest


async def _sopy_admin(sopy: SopyUnderTest, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "sopy", "admin", *args],
        env={"SOPY_ADMIN_SOCKET": str(sopy.settings.admin_socket), "PATH": "/usr/bin:/bin"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_admin_prints_results_readably(sopy: SopyUnderTest) -> None:
    added = await _sopy_admin(
        sopy, "add_backend", "--provider", "openai", "--url", "https://api.openai.com/v1"
    )
    assert added.returncode == 0, added.stderr
    assert b"https://api.openai.com" in added.stdout

    await _sopy_admin(sopy, "add-user-api-key", "--api-key", "sk-user-123", "--description", "A")
    listed = await _sopy_admin(sopy, "list_user_api_keys")
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == [
        "id", "prefix", "description", "active", "created_at", "rpm", "tpm", "max_parallel",
        "token_budget", "expires_at", "models", "usage_reset_at", "limit_failure",
    ]  # fmt: skip
    assert lines[1].split()[0] == "1"
    assert "sk-user-123" not in listed.stdout.decode()


async def test_admin_json_flag_prints_the_raw_reply(sopy: SopyUnderTest) -> None:
    result = await _sopy_admin(sopy, "--json", "get_user_api_key", "--id", "1")
    assert result.returncode == 1
    reply = orjson.loads(result.stdout)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "not_found"


async def test_admin_error_reply_exits_non_zero_with_the_message(sopy: SopyUnderTest) -> None:
    result = await _sopy_admin(sopy, "get_model_mapping", "--model-name", "gpt-9")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error [not_found]: no model mapping for 'gpt-9'")


async def test_admin_without_a_server_says_how_to_fix_it(sopy: SopyUnderTest) -> None:
    await sopy.stop()
    result = await _sopy_admin(sopy, "list_backends")
    assert result.returncode == 2
    assert b"is `sopy serve` running" in result.stderr


def test_cli_fields_are_typed_by_the_command() -> None:
    assert command_payload("get-admin-auth", ["--name", "openai", "--reveal"]) == {
        "command": "get_admin_auth",
        "name": "openai",
        "reveal": True,
    }
    assert command_payload("activate_user_api_key", ["--id=3"]) == {
        "command": "activate_user_api_key",
        "id": 3,
    }
    assert command_payload(
        "add_model_mapping", ["--model-name", "m", "--provider", "p", "--replace", "false"]
    ) == {
        "command": "add_model_mapping",
        "model_name": "m",
        "provider": "p",
        "replace": False,
    }


def test_cli_list_fields_take_comma_separated_names() -> None:
    payload = command_payload(
        "add_model_mapping",
        ["--model-name", "gpt-4.1", "--provider", "openai", "--fallbacks", "azure, backup"],
    )
    assert payload["fallbacks"] == ["azure", "backup"]
    assert command_payload("add_backend", ["--weight", "3"])["weight"] == 3
