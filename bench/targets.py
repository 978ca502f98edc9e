"""The processes under test and how to reach them: the upstream (nginx from
`nginx.conf.template`, or `sopy mock-upstream`), Sopy configured over its admin socket, and
optionally the LiteLLM proxy (installed on demand into `bench/.litellm-venv`, configured by
`litellm_config.yaml`).

Each is started as a child process in its own process group with its output in a log file of
the run's temp directory, and is stopped (SIGTERM, then SIGKILL) by `Children.stop_all`; a child
also gets SIGTERM if the benchmark itself dies. All traffic stays on 127.0.0.1.
"""

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from load import BENCH_DIR, BenchError, RequestSpec

from sopy.cli.admin_client import AdminUnreachable, send_admin_command
from sopy.cli.background import READY_LINE

PROVIDER = "bench"
PROVIDER_CREDENTIAL = "sk-bench-provider-credential"
MODEL = "bench-model"
LITELLM_STREAM_MODEL = "bench-model-stream"
LITELLM_VENV = BENCH_DIR / ".litellm-venv"
LITELLM_CONFIG = BENCH_DIR / "litellm_config.yaml"
NGINX_TEMPLATE = BENCH_DIR / "nginx.conf.template"
_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
_PR_SET_PDEATHSIG = 1


@dataclass
class Target:
    """Something to send chat completions to. `pid` is the process measured for CPU and
    memory (with its descendants); `stream_model` is the model name used when streaming."""

    name: str
    base_url: str
    api_key: str
    model: str
    stream_model: str
    pid: int

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def plain_request(self) -> RequestSpec:
        body = json.dumps({"model": self.model, "messages": _MESSAGES}, separators=(",", ":"))
        return RequestSpec(self.base_url + "/v1/chat/completions", self._headers(), body.encode())

    def stream_request(self) -> RequestSpec:
        body = json.dumps(
            {"model": self.stream_model, "messages": _MESSAGES, "stream": True},
            separators=(",", ":"),
        )
        headers = {**self._headers(), "x-bench-stream": "1"}
        url = self.base_url + "/v1/chat/completions"
        return RequestSpec(url, headers, body.encode(), stream=True)


@dataclass
class Child:
    """A started child process and its log file."""

    name: str
    process: "subprocess.Popen[bytes]"
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout_s)


@dataclass
class Children:
    """Every child process started for a run, stopped in reverse order."""

    workdir: Path
    started: list[Child] = field(default_factory=list)
    keep_logs: bool = False  # set when a log is worth reading after the run

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path)
        self.started.append(child)
        return child

    def stop(self, name: str) -> None:
        """Stop the child called `name` now (e.g. so that its profile gets written)."""
        for child in self.started:
            if child.name == name:
                child.stop()

    def stop_all(self) -> None:
        for child in reversed(self.started):
            try:
                child.stop()
            except (OSError, subprocess.TimeoutExpired) as error:
                print(f"warning: could not stop {child.name} (pid {child.process.pid}): {error}")
        self.started.clear()


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux for SIGTERM when the benchmark exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)  # the child leads its own group (start_new_session)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(
    ready: Callable[[], bool], child: Child, what: str, timeout_s: float, hint: str
) -> None:
    """Poll `ready` until true; raise BenchError (with the child's log) on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not child.alive():
            raise BenchError(
                f"{what} exited with code {child.process.returncode} before it was ready; "
                f"{hint}. Its log ({child.log_path}):\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what} was not ready within {timeout_s:g} s; {hint}. "
                f"Its log ({child.log_path}):\n{child.log_tail()}"
            )
        time.sleep(0.05)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_contains(child: Child, text: str) -> bool:
    try:
        return text in child.log_path.read_text(errors="replace")
    except OSError:
        return False


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(children: Children) -> Target:
    """nginx in the foreground (`daemon off`) on a free port, all its paths in the workdir."""
    nginx = nginx_path()
    if nginx is None:
        raise BenchError("nginx not found: apt-get install -y nginx (or use --upstream mock)")
    prefix = children.workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    config = (
        NGINX_TEMPLATE.read_text()
        .replace("@@PREFIX@@", str(prefix))
        .replace("@@PORT@@", str(port))
        .replace("@@CREDENTIAL@@", PROVIDER_CREDENTIAL)
    )
    config_path = prefix / "nginx.conf"
    config_path.write_text(config)
    error_log = str(prefix / "nginx-error.log")
    argv = [nginx, "-p", str(prefix), "-c", str(config_path), "-e", error_log]
    child = children.spawn("nginx", argv)
    wait_until(
        lambda: _accepts_connections(port),
        child,
        "nginx",
        10,
        f"check {error_log} and the generated {config_path}",
    )
    return Target(
        "direct", f"http://127.0.0.1:{port}", PROVIDER_CREDENTIAL, MODEL, MODEL, child.process.pid
    )


def start_mock_upstream(children: Children) -> Target:
    """`sopy mock-upstream` (a Python server: much slower than nginx) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "sopy", "mock-upstream", "--port", str(port), "--name", "bench"]
    child = children.spawn("mock-upstream", argv)
    wait_until(
        lambda: _log_contains(child, "listening on"),
        child,
        "sopy mock-upstream",
        20,
        "check that sopy is installed in this Python (pip install -e .)",
    )
    return Target(
        "direct", f"http://127.0.0.1:{port}", PROVIDER_CREDENTIAL, MODEL, MODEL, child.process.pid
    )


def start_sopy(
    children: Children,
    upstream_url: str,
    profile_to: Path | None = None,
    *,
    name: str = "sopy",
    python: str = sys.executable,
    governed: bool = False,
    workers: int = 1,
) -> Target:
    """`python -m sopy serve` on a free port, configured over its admin socket with a user key,
    the provider credential, a backend pointing at the upstream and a model mapping.

    `governed`: the key gets every per-key control (`GOVERNED_KEY_LIMITS`: generous, never hit)
    and /metrics labels requests by key (`--metrics-per-key`): the benchmark's governed lane.

    With `profile_to`, Sopy runs under cProfile, which writes that pstats file when Sopy exits.
    `python` may be another virtualenv's interpreter, with another checkout of Sopy installed:
    that is how `--baseline` measures a change before and after in the same run.
    `workers`: `--workers N` (the primary and N worker processes; the target's pid is the
    primary's, and its CPU is its whole process tree's).
    """
    port = free_port()
    sopy_dir = children.workdir / name
    sopy_dir.mkdir()
    admin_socket = sopy_dir / "admin.sock"
    profiler = [] if profile_to is None else ["-m", "cProfile", "-o", str(profile_to)]
    argv = [
        python,
        *profiler,
        "-m",
        "sopy",
        "serve",
        "--port",
        str(port),
        "--db-path",
        str(sopy_dir / "sopy_admin.db"),
        "--admin-socket",
        str(admin_socket),
        "--log-level",
        "warning",
        *(["--metrics-per-key"] if governed else []),
        *(["--workers", str(workers)] if workers > 1 else []),
    ]
    child = children.spawn(name, argv)
    wait_until(
        lambda: _log_contains(child, READY_LINE) and admin_socket.exists(),
        child,
        "sopy serve",
        30,
        "check that this Python has sopy installed (pip install -e .) and that it starts by "
        "hand with `python -m sopy serve`",
    )
    admin_command(admin_socket, "add_admin_auth", name=PROVIDER, credentials=PROVIDER_CREDENTIAL)
    admin_command(admin_socket, "add_backend", provider=PROVIDER, url=upstream_url)
    admin_command(admin_socket, "add_model_mapping", model_name=MODEL, provider=PROVIDER)
    limits = governed_key_limits() if governed else {}
    key = admin_command(admin_socket, "add_user_api_key", description="bench/run.py", **limits)
    return Target(
        name, f"http://127.0.0.1:{port}", str(key["api_key"]), MODEL, MODEL, child.process.pid
    )


class MetricsScraper:
    """GETs a /metrics URL every `every_s` seconds on a thread while in its `with` block, as a
    Prometheus server would, so the governed lane pays for being scraped too."""

    def __init__(self, url: str, every_s: float = 1.0) -> None:
        self.url, self.every_s = url, every_s
        self.scrapes = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def __enter__(self) -> "MetricsScraper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1


def governed_key_limits() -> dict[str, object]:
    """Every per-key control, set so that no benchmark run reaches one: each request still goes
    through the whole decision (rates, tokens reserved and settled, parallel count, budget,
    expiry, allow-list)."""
    return {
        "rpm": 1_000_000,
        "tpm": 1_000_000_000_000,
        "max_parallel": 100_000,
        "token_budget": 10**15,
        "expires_at": int(time.time()) + 365 * 24 * 3600,
        "models": [MODEL],
    }


def admin_command(path: Path, command: str, **fields: object) -> dict[str, object]:
    """Send one JSON-lines command to Sopy's admin socket and return its result."""
    try:
        reply = send_admin_command(path, {"command": command, **fields})
    except AdminUnreachable as error:
        raise BenchError(f"{error} (on {command}); see the sopy log") from None
    if not reply.get("ok"):
        raise BenchError(
            f"Sopy refused admin command {command}: {reply.get('error')}; the admin protocol "
            "may have changed, update bench/targets.py:start_sopy"
        )
    result: dict[str, object] = reply.get("result") or {}
    return result


def ensure_litellm(progress: Callable[[str], None], timeout_s: float = 900) -> Path:
    """The `litellm` executable of `bench/.litellm-venv`, creating the venv and installing
    `litellm[proxy]` with pip first if needed (printing pip's output as progress)."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    progress(f"installing litellm[proxy] into {LITELLM_VENV} (one-off; a few minutes)")
    started = time.monotonic()
    commands = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--progress-bar", "off", "litellm[proxy]"],
    ]
    for argv in commands:
        remaining = timeout_s - (time.monotonic() - started)
        _run_with_progress(argv, progress, remaining)
    if not executable.exists():
        raise BenchError(
            f"pip finished but {executable} is missing; remove {LITELLM_VENV} and retry"
        )
    return executable


def _run_with_progress(argv: list[str], progress: Callable[[str], None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail = [*tail[-9:], line.rstrip()]
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                progress("  pip: " + line.rstrip()[:110])
            if time.monotonic() > deadline:
                process.kill()
                raise BenchError(
                    f"`{' '.join(argv)}` took longer than {timeout_s:.0f} s; check the network "
                    f"access to PyPI, then retry (or remove {LITELLM_VENV})"
                )
        code = process.wait()
    if code != 0:
        raise BenchError(
            f"`{' '.join(argv)}` failed with exit code {code}; check the network access to "
            f"PyPI and remove {LITELLM_VENV} before retrying. Last lines:\n" + "\n".join(tail)
        )


def start_litellm(children: Children, upstream_url: str, progress: Callable[[str], None]) -> Target:
    """The LiteLLM proxy (one worker) on a free port with `litellm_config.yaml`, pointed at the
    same upstream; offline: the model cost map is the bundled one."""
    executable = ensure_litellm(progress)
    port = free_port()
    master_key = "sk-bench-litellm-" + secrets.token_hex(8)
    env = {
        "BENCH_UPSTREAM_API_BASE": upstream_url + "/v1",
        "BENCH_UPSTREAM_STREAM_API_BASE": upstream_url + "/stream/v1",
        "BENCH_PROVIDER_CREDENTIAL": PROVIDER_CREDENTIAL,
        "BENCH_LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True",
    }
    argv = [
        str(executable),
        "--config",
        str(LITELLM_CONFIG),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    progress(f"starting LiteLLM proxy on port {port} (may take 10-60 s to import)")
    child = children.spawn("litellm", argv, env)

    def alive() -> bool:
        try:
            url = f"http://127.0.0.1:{port}/health/liveliness"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(
        alive,
        child,
        "LiteLLM proxy",
        180,
        f"try starting it by hand: {executable} --config {LITELLM_CONFIG}",
    )
    return Target(
        "litellm",
        f"http://127.0.0.1:{port}",
        master_key,
        MODEL,
        LITELLM_STREAM_MODEL,
        child.process.pid,
    )
