"""Specs for `sopy mock-upstream`'s mode flags, run as the real command in a child process."""

import os
import re
import signal
import subprocess
import sys

import httpx
import trio


async def start_mock(*flags: str) -> tuple[trio.Process, str, str]:
    """Start `sopy mock-upstream` on a free port; its process, listening line and base URL."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "sopy", "mock-upstream", "--port", "0", "--name", "cli", *flags],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(20):
        while b"\n" not in output:
            output += await process.stdout.receive_some()
    line = output.decode().splitlines()[0]
    match = re.search(r"listening on (\S+?),?(\s|$)", line)
    assert match is not None, line
    return process, line, match[1]


async def stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await process.wait() == 0


async def test_chat_only_flag_serves_chat_and_404s_the_rest() -> None:
    process, line, base_url = await start_mock("--chat-only")
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            models = await http.get("/models")
            embeddings = await http.post("/embeddings", json={"model": "m", "input": "x"})
    finally:
        await stop(process)

    assert "chat completions and models only" in line
    assert models.status_code == 200
    assert embeddings.status_code == 404


async def test_anthropic_strict_flag_requires_the_version_header() -> None:
    process, line, base_url = await start_mock("--anthropic-strict")
    body = {"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            refused = await http.post("/messages", json=body, headers={"x-api-key": "k"})
    finally:
        await stop(process)

    assert "Anthropic Messages only" in line
    assert refused.status_code == 400
    assert refused.json()["type"] == "error"


async def test_no_websocket_flag_is_named_on_the_listening_line() -> None:
    process, line, _ = await start_mock("--no-websocket")
    await stop(process)

    assert "without the Responses WebSocket mode" in line


async def test_base_path_flag_serves_the_api_there() -> None:
    process, _, base_url = await start_mock("--base-path", "/openai/v1")
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            models = await http.get("/models")
    finally:
        await stop(process)

    assert base_url.endswith("/openai/v1")
    assert models.status_code == 200


def test_chat_only_and_anthropic_strict_flags_exclude_each_other() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sopy", "mock-upstream", "--chat-only", "--anthropic-strict"],
        capture_output=True,
        timeout=20,
    )

    assert result.returncode == 2
    assert b"not allowed with" in result.stderr
