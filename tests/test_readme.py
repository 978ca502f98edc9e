"""The README is a spec a new user runs by hand: its quick start and admin examples run as written
(only the ports differ, so the test can run beside anything), its command table names every
admin command and field, its event list names every kind, and every package a snippet imports
is installed by a command the README shows."""

import ast
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import trio

from sopy.messages import ADMIN_COMMANDS, CONFIG_EVENTS
from tests.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PLACEHOLDER_KEY = '"sk-sopy-..."'


def section(title: str) -> str:
    """The README text from the heading `title` to the next heading of the same level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, re.MULTILINE)
    assert match is not None, f"README has no section {title!r}"
    level = match.group(1)
    rest = README[match.end() :]
    end = re.search(rf"^{level} ", rest, re.MULTILINE)
    return rest if end is None else rest[: end.start()]


def code_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_command_table_names_every_admin_command_and_field() -> None:
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)`(?: / `\w+`)* \|([^|]*)\|", README, re.MULTILINE)
    }
    for second in re.findall(r"^\| `\w+` / `(\w+)` \|([^|]*)\|", README, re.MULTILINE):
        rows[second[0]] = second[1]
    for name, command in ADMIN_COMMANDS.items():
        assert name in rows, f"the README's command table has no row for {name}"
        for field in attrs.fields(command):
            assert f"`{field.name}`" in rows[name], f"{name}'s row does not name `{field.name}`"


def test_event_list_names_every_event_kind() -> None:
    listed = re.search(r"\(kinds: (.*?)\)", section("Live change stream"), re.DOTALL)
    assert listed is not None
    for kind in CONFIG_EVENTS:
        assert f"`{kind}`" in listed.group(1), f"the README's event kinds miss {kind}"


def test_every_package_a_snippet_imports_is_installed_by_the_readme() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = {re.split(r"[<>=\[ ]", dep)[0] for dep in project["dependencies"]} | {"sopy"}
    pip_lines = " ".join(
        line for block in code_blocks(README, "bash") for line in block.splitlines()
    )
    for packages in re.findall(r"pip install ((?:[\w-]+ ?)+)", pip_lines):
        installed |= set(packages.split())
    for snippet in code_blocks(README, "python"):
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names or top in installed, (
                        f"a README snippet imports {top}, which no README command installs"
                    )


def test_commands_run_with_the_virtualenvs_tools() -> None:
    """A fresh machine has no `sopy` or project `python` on PATH: every command names .venv/bin."""
    for block in code_blocks(README, "bash"):
        for line in block.splitlines():
            words = line.strip().split()
            if words and words[0] in {"python", "sopy", "pip", "pytest"}:
                raise AssertionError(f"README command without .venv/bin/: {line.strip()}")


async def run_bash(script: str, cwd: Path, env: dict[str, str], within: float = 60) -> str:
    with trio.fail_after(within):
        done = await trio.run_process(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, f"README commands failed ({done.returncode}):\n{script}\n{output}"
    return done.stdout.decode()


async def test_quick_start_and_admin_examples_run_as_written(workdir: Path) -> None:
    # Given a `sopy serve` in a fresh directory whose .venv is this test run's virtualenv
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    server = await ServeProcess.start(workdir)
    mock_port = free_port()

    def as_run_here(text: str) -> str:
        text = text.replace("http://127.0.0.1:8000", server.http_url)
        return re.sub(r"\b9000\b", str(mock_port), text)

    env = {**os.environ, "PATH": f"{workdir / '.venv' / 'bin'}:{os.environ['PATH']}"}
    quick_start = [as_run_here(block) for block in code_blocks(section("Quick start"), "bash")]
    mock, configure, curl_calls, install_sdks = quick_start
    assert mock.strip().endswith("&"), "the quick start runs the mock in the background"
    mock_process = await trio.lowlevel.open_process(
        ["bash", "-c", f"exec {mock.strip().removesuffix('&')}"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    script = "\n".join(
        [
            f"for _ in $(seq 100); do (: </dev/tcp/127.0.0.1/{mock_port}) 2>/dev/null && break;"
            " sleep 0.1; done",
            configure,
            curl_calls,
            install_sdks,
            'printf "%s" "$KEY" > key.txt',
        ]
    )
    try:
        # When the quick start's commands run as written
        reply = await run_bash(script, workdir, env, within=120)
        key = (workdir / "key.txt").read_text()

        # Then the curl calls got a chat answer and an embedding from the mock provider
        assert '"content":"Hello from mock' in reply, reply
        assert '"object":"embedding"' in reply.replace(" ", ""), reply

        # And the SDK snippets, with the key from above, answer: the OpenAI one chats, streams,
        # makes a Responses API response and reaches it again, and embeds; the Anthropic one
        # gets a message
        openai_snippet, anthropic_snippet = code_blocks(section("Quick start"), "python")
        printed = []
        for snippet in (openai_snippet, anthropic_snippet):
            assert _PLACEHOLDER_KEY in snippet
            program = as_run_here(snippet).replace(_PLACEHOLDER_KEY, repr(key))
            command = f".venv/bin/python - <<'EOF'\n{program}EOF\n"
            printed.append(await run_bash(command, workdir, env))
        lines = printed[0].splitlines()
        assert "you said Hello!" in lines[0] and "you said Stream it" in lines[1], printed[0]
        assert "you said Hello, Responses!" in lines[2] and lines[3] == "completed", printed[0]
        assert int(lines[4]) > 0, printed[0]
        assert "Hello!" in printed[1], printed[1]

        # And every admin example runs and ends by itself; `sopy events` follows until stopped
        (examples,) = code_blocks(section("Admin socket"), "bash")
        for line in examples.splitlines():
            command = line.split("  #")[0].strip()
            if command.endswith("sopy events"):
                with trio.move_on_after(3):
                    await run_bash(command, workdir, env)
                    raise AssertionError("sopy events ended although it should follow")
                continue
            output = await run_bash(command, workdir, env, within=10)
            assert "openai" in output, f"{command} printed no provider:\n{output}"
    finally:
        mock_process.kill()
        await mock_process.wait()
        assert await server.terminate() == 0


def test_the_start_script_command_is_the_virtualenvs_python() -> None:
    text = section("Running in the background")
    assert "`.venv/bin/python start_server.py`" in text
    assert (
        subprocess.run(
            [sys.executable, str(ROOT / "start_server.py"), "--help"], capture_output=True
        ).returncode
        == 0
    )
