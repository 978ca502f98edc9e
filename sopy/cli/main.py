"""The `sopy` command: `serve` runs the gateway, `start` runs it in the background, `admin`
sends one admin command, `events` follows the live change stream, `mock-upstream` runs the
bundled OpenAI-compatible test server; `worker` is one worker process of `serve --workers N`,
started by the primary only."""

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from sopy.admin.command_text import field_value, is_flag
from sopy.boolean_text import is_boolean
from sopy.cli import admin_output
from sopy.cli.admin_client import AdminUnreachable, send_admin_command
from sopy.cli.background import start_in_background
from sopy.cli.events_client import follow_events
from sopy.config.secret_box import new_secret_key
from sopy.errors import InvalidField, StartupError, innermost
from sopy.messages import ADMIN_COMMANDS, RotateSecretKey
from sopy.runtime.garbage_collection import tune_for_serving
from sopy.settings import ENVIRONMENT_VARIABLES, Settings, load_settings
from sopy.supervisor import RunningSopy, run_sopy
from sopy.testing.mock_upstream import run_mock_upstream
from sopy.workers import run_primary, run_worker

EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
KEY_ON_COMMAND_LINE = (
    "a secret key on the command line can be read by every local user (ps, /proc/PID/cmdline) "
    "and stays in shell history"
)


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.action != "admin" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        sys.exit(args.handler(args, rest))
    except (StartupError, UsageError, AdminUnreachable) as error:
        print(f"sopy: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sopy", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True)

    serve = actions.add_parser("serve", help="run the gateway in the foreground")
    start = actions.add_parser(
        "start", help="run the gateway in the background; prints its URL, PID and log file"
    )
    start.add_argument("--log-file", default="sopy.log", help="default ./sopy.log")
    start.set_defaults(handler=_start)
    for field in attrs.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        described = (
            f"{field.metadata['help']}; default {field.default} "
            f"(env {ENVIRONMENT_VARIABLES[field.name]})"
        )
        for command in (serve, start):
            if field.type is bool:
                command.add_argument(
                    flag, action="store_const", const=True, default=None, help=described
                )
            else:
                command.add_argument(flag, default=None, help=described)
    serve.set_defaults(handler=_serve)

    admin = actions.add_parser(
        "admin",
        help="send one admin command, e.g. `sopy admin add_backend --provider openai --url ...`",
        description="Fields are given as --field value; booleans as --flag or --flag false. "
        f"Commands: {', '.join(sorted(ADMIN_COMMANDS))}.",
    )
    admin.add_argument("command", help="the admin command, e.g. list_backends")
    admin.add_argument("--admin-socket", default=None, help="default ./sopy-admin.sock")
    admin.add_argument("--json", action="store_true", help="print the raw JSON reply")
    admin.add_argument("--yes", action="store_true", help="do not ask to confirm rotate-secret-key")
    admin.set_defaults(handler=_admin)

    events = actions.add_parser(
        "events", help="follow the live config change stream, one line per change"
    )
    events.add_argument("--since", type=int, default=None, help="resume after this version")
    events.add_argument("--admin-socket", default=None, help="default ./sopy-admin.sock")
    events.add_argument("--json", action="store_true", help="print the raw JSON messages")
    events.set_defaults(handler=_events)

    secret_key = actions.add_parser(
        "secret-key", help="print a new secret key for SOPY_SECRET_KEY or a key file"
    )
    secret_key.set_defaults(handler=_print_secret_key)

    mock = actions.add_parser(
        "mock-upstream", help="run the bundled mock OpenAI and Anthropic provider"
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--name", default="mock")
    mock.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        help="chance (0 to 1) that a chat completion without its own faults fails at random",
    )
    mock.add_argument("--seed", type=int, default=None, help="seed for replayable random failures")
    mock.add_argument(
        "--hang-seconds",
        type=float,
        default=30.0,
        help="how long a random hang holds back the headers; default 30",
    )
    modes = mock.add_mutually_exclusive_group()
    modes.add_argument(
        "--chat-only",
        action="store_true",
        help="serve only /v1/chat/completions and /v1/models, 404 to the rest",
    )
    modes.add_argument(
        "--anthropic-strict",
        action="store_true",
        help="serve only Anthropic's /v1/messages routes, checking headers and bodies strictly",
    )
    mock.add_argument(
        "--base-path",
        default="/v1",
        help="where the API lives, e.g. /openai/v1 as at Azure OpenAI; default /v1",
    )
    mock.add_argument(
        "--no-websocket",
        action="store_true",
        help="refuse the Responses WebSocket mode (404 to the upgrade)",
    )
    mock.set_defaults(handler=_mock_upstream)

    worker = actions.add_parser(
        "worker", help="(internal) one worker process, started by `sopy serve --workers N`"
    )
    worker.add_argument("--link-fd", type=int, required=True)
    worker.add_argument("--listen-fds", required=True)
    worker.add_argument("--counts-fd", type=int, required=True)
    worker.add_argument("--slot", type=int, required=True)
    worker.set_defaults(handler=_worker)
    return parser


def _start(args: argparse.Namespace, _rest: list[str]) -> int:
    _warn_of_a_key_on_the_command_line(args)
    serve_args: list[str] = []
    environment: dict[str, str] = {}
    for name, variable in ENVIRONMENT_VARIABLES.items():
        value = getattr(args, name)
        if name == "secret_key" and value is not None:
            # The child's command line would show the key to every local user; its
            # environment does not.
            environment[variable] = value
        elif value is True:
            serve_args.append("--" + name.replace("_", "-"))
        elif value is not None:
            serve_args += ["--" + name.replace("_", "-"), str(value)]
    print(start_in_background(serve_args, Path(args.log_file), environment))
    return 0


def _warn_of_a_key_on_the_command_line(args: argparse.Namespace) -> None:
    if args.secret_key is not None:
        print(
            f"sopy: warning: {KEY_ON_COMMAND_LINE}; set SOPY_SECRET_KEY or use "
            "--secret-key-file instead",
            file=sys.stderr,
        )


def _serve(args: argparse.Namespace, _rest: list[str]) -> int:
    _warn_of_a_key_on_the_command_line(args)
    # Whatever file any part of Sopy creates is private to its user from the start.
    os.umask(0o077)
    settings = load_settings(vars(args))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        tune_for_serving()
        trio.run(_serve_until_signalled, settings)
    except BaseExceptionGroup as group:
        startup, _ = group.split(StartupError)
        if startup is None:
            raise
        raise innermost(startup) from None
    return 0


async def _serve_until_signalled(settings: Settings) -> None:
    shutdown = trio.Event()
    run = run_sopy if settings.workers == 1 else run_primary
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running: RunningSopy = await nursery.start(run, settings, shutdown)
            print(startup_banner(settings, running), flush=True)
            async for signum in signals:
                logging.getLogger("sopy").info("received %s", signal.Signals(signum).name)
                shutdown.set()
                break


def startup_banner(settings: Settings, running: RunningSopy) -> str:
    banner = (
        "Sopy is running\n"
        f"  Server URL:   {running.http_url}\n"
        f"  Admin socket: {running.admin_socket.absolute()}\n"
        f"  Database:     {settings.db_path.absolute()}\n"
        f"  PID:          {os.getpid()}"
    )
    if running.worker_pids:
        banner += f"\n  Worker PIDs:  {' '.join(map(str, running.worker_pids))}"
    return banner


def _worker(args: argparse.Namespace, _rest: list[str]) -> int:
    listen_fds = [int(fd) for fd in args.listen_fds.split(",")]
    tune_for_serving()
    trio.run(run_worker, args.link_fd, listen_fds, args.counts_fd, args.slot)
    return 0


def _admin(args: argparse.Namespace, rest: list[str]) -> int:
    settings = load_settings({"admin_socket": args.admin_socket})
    payload = command_payload(args.command, rest)
    rotating = payload["command"] == RotateSecretKey.command
    if rotating and payload.get("new_key"):
        print(
            f"sopy: warning: {KEY_ON_COMMAND_LINE}; prefer letting Sopy generate the key",
            file=sys.stderr,
        )
    if rotating and not args.yes and not _confirmed(ROTATION_QUESTION):
        print("sopy: the secret key was not rotated", file=sys.stderr)
        return EXIT_ERROR_REPLY
    reply = send_admin_command(settings.admin_socket, payload)
    if args.json:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    elif reply.get("ok"):
        print(admin_output.format_result(reply.get("result")))
        if rotating:
            print(admin_output.where_the_new_key_lives(reply["result"]))
    else:
        print(admin_output.format_error(reply.get("error", {})), file=sys.stderr)
    return 0 if reply.get("ok") else EXIT_ERROR_REPLY


ROTATION_QUESTION = (
    "Reseal every stored provider credential with a new secret key? From then on only the new "
    "key opens the database. [y/N] "
)


def _confirmed(question: str) -> bool:
    """Ask on the terminal; without one there is no one to ask, so the answer is no."""
    if not sys.stdin.isatty():
        raise UsageError(
            "rotate-secret-key replaces the key the database needs at the next start; there is "
            "no terminal to confirm it on, so pass --yes"
        )
    return input(question).strip().lower() in ("y", "yes")


def command_payload(command: str, tokens: Sequence[str]) -> dict[str, Any]:
    """The JSON command for `sopy admin COMMAND --field value ...`, typed by the command's fields.

    Validation itself is left to the server, so the CLI never disagrees with it.
    """
    name = command.replace("-", "_")
    cls = ADMIN_COMMANDS.get(name)
    payload: dict[str, Any] = {"command": name}
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"expected --field, got {token!r}; see `sopy admin --help`")
        key, has_inline, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        position += 1
        if has_inline:
            text = inline
        elif is_flag(cls, key) and (position >= len(tokens) or not is_boolean(tokens[position])):
            text = "true"
        elif position < len(tokens):
            text = tokens[position]
            position += 1
        else:
            raise UsageError(f"--{key} needs a value")
        try:
            payload[key] = field_value(cls, key, text)
        except InvalidField as error:
            raise UsageError(error.message) from None
    return payload


def _print_secret_key(_args: argparse.Namespace, _rest: list[str]) -> int:
    print(new_secret_key())
    return 0


def _events(args: argparse.Namespace, _rest: list[str]) -> int:
    settings = load_settings({"admin_socket": args.admin_socket})
    try:
        return trio.run(partial(follow_events, settings.admin_socket, args.since, raw=args.json))
    except KeyboardInterrupt:
        return 0


def _mock_upstream(args: argparse.Namespace, _rest: list[str]) -> int:
    try:
        run_mock_upstream(
            args.host,
            args.port,
            args.name,
            failure_rate=args.failure_rate,
            seed=args.seed,
            hang_seconds=args.hang_seconds,
            chat_only=args.chat_only,
            anthropic_strict=args.anthropic_strict,
            websocket=not args.no_websocket,
            base_path=args.base_path,
        )
    except ValueError as error:
        # Out-of-range options are rejected before the server starts: a usage mistake.
        raise UsageError(str(error)) from None
    return 0
