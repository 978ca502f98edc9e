"""Load generation and its measurements: wrk runs (driven by `post.lua`), the small built-in
Python load generator used by `--quick`, and the streaming client that times the first chunk.

This module knows nothing about which process is behind a URL; it sends `RequestSpec`s and
returns measurements. `BenchError` (an error whose message says what to do next) lives here
because every other module raises it.
"""

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import trio

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "post.lua"
REQUEST_TIMEOUT_S = 10.0
_RESULT_PREFIX = "BENCH_RESULT "


class BenchError(Exception):
    """A failure of the benchmark itself; the message says what to do about it."""


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request to replay: POST `body` to `url` with `headers`."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool = False


@dataclass
class LoadMeasurement:
    """What one load run saw. `requests` counts completed responses, errors included."""

    tool: str
    concurrency: int
    requests: int
    errors: int
    error_detail: dict[str, int]
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class StreamMeasurement:
    """What the streaming client saw over `streams` sequential streamed completions."""

    streams: int
    errors: int
    error_detail: dict[str, int]
    first_chunk_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    plain: RequestSpec,
    stream: RequestSpec,
    *,
    concurrency: int,
    duration_s: float,
    threads: int,
    mode: str = "plain",
    stream_every: int = 4,
    stop_after_per_thread: int = 0,
) -> LoadMeasurement:
    """Run wrk against `plain.url` for `duration_s` seconds (or until each thread has seen
    `stop_after_per_thread` responses) and parse its result."""
    wrk = wrk_path()
    if wrk is None:
        raise BenchError(
            "wrk not found: apt-get install -y wrk (or run `python bench/run.py --quick`, "
            "which uses the built-in Python load generator)"
        )
    threads = max(1, min(threads, concurrency))
    env = {
        **os.environ,
        "BENCH_AUTHORIZATION": plain.headers["Authorization"],
        "BENCH_PLAIN_BODY": plain.body.decode(),
        "BENCH_STREAM_BODY": stream.body.decode(),
        "BENCH_MODE": mode,
        "BENCH_STREAM_EVERY": str(stream_every),
        "BENCH_STOP_AFTER": str(stop_after_per_thread),
    }
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={REQUEST_TIMEOUT_S:g}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        plain.url,
    ]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"wrk did not finish within {duration_s + 30:g} s; is the machine overloaded? "
            "Retry with a shorter --duration or lower --concurrency"
        ) from None
    if done.returncode != 0:
        raise BenchError(
            f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}; "
            f"check that {plain.url} answers (the target's log is in the run's temp directory)"
        )
    return parse_wrk_output(done.stdout, concurrency)


def parse_wrk_output(text: str, concurrency: int) -> LoadMeasurement:
    """Numbers from wrk's stdout: the exact `BENCH_RESULT` line of `post.lua` if present,
    otherwise wrk's own `--latency` text (rounded to two decimals by wrk)."""
    for line in text.splitlines():
        if line.startswith(_RESULT_PREFIX):
            data = json.loads(line[len(_RESULT_PREFIX) :])
            detail = {
                name: int(data[name])
                for name in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
                if data[name]
            }
            return LoadMeasurement(
                tool="wrk",
                concurrency=concurrency,
                requests=int(data["requests"]),
                errors=sum(detail.values()),
                error_detail=detail,
                duration_s=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1e3,
                p90_ms=data["p90_us"] / 1e3,
                p99_ms=data["p99_us"] / 1e3,
                max_ms=data["max_us"] / 1e3,
            )
    return _parse_wrk_text(text, concurrency)


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _parse_wrk_text(text: str, concurrency: int) -> LoadMeasurement:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
        if match is None:
            raise BenchError(f"could not find the {label} latency in wrk's output:\n{text}")
        return float(match.group(1)) * _UNIT_MS[match.group(2)]

    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if summary is None:
        raise BenchError(f"could not parse wrk's output (is it wrk 4.x?):\n{text}")
    detail: dict[str, int] = {}
    if socket := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        for name, value in zip(
            ("connect_errors", "read_errors", "write_errors", "timeouts"),
            socket.groups(),
            strict=True,
        ):
            if int(value):
                detail[name] = int(value)
    if status := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        detail["status_errors"] = int(status.group(1))
    max_match = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)", text)
    return LoadMeasurement(
        tool="wrk",
        concurrency=concurrency,
        requests=int(summary.group(1)),
        errors=sum(detail.values()),
        error_detail=detail,
        duration_s=float(summary.group(2)) * _UNIT_MS[summary.group(3)] / 1e3,
        p50_ms=latency("50%"),
        p90_ms=latency("90%"),
        p99_ms=latency("99%"),
        max_ms=float(max_match.group(1)) * _UNIT_MS[max_match.group(2)] if max_match else 0.0,
    )


def run_python_load(
    plain: RequestSpec,
    stream: RequestSpec | None,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    stream_every: int = 4,
) -> LoadMeasurement:
    """Send up to `max_requests` requests from `concurrency` connections (httpx on trio), for
    at most `max_seconds`; with `stream`, every `stream_every`-th request streams.

    Much slower than wrk (the client, not the target, is the bottleneck): for `--quick` only.
    """
    return trio.run(
        partial(_python_load, plain, stream, concurrency, max_requests, max_seconds, stream_every)
    )


async def _python_load(
    plain: RequestSpec,
    stream: RequestSpec | None,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    stream_every: int,
) -> LoadMeasurement:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            spec = stream if stream is not None and issued % stream_every == 0 else plain
            sent = time.perf_counter()
            try:
                response = await client.post(spec.url, headers=spec.headers, content=spec.body)
            except httpx.HTTPError as error:
                errors[type(error).__name__] += 1
                continue
            latencies.append((time.perf_counter() - sent) * 1e3)
            problem = _answer_problem(response.status_code, response.content, spec.stream)
            if problem is not None:
                errors[problem] += 1

    async with (
        httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client,
        trio.open_nursery() as nursery,
    ):
        for _ in range(concurrency):
            nursery.start_soon(worker, client)
    return LoadMeasurement(
        tool="python",
        concurrency=concurrency,
        requests=len(latencies),
        errors=sum(errors.values()),
        error_detail=dict(errors),
        duration_s=time.perf_counter() - started,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=0.0),
    )


def run_stream_probe(spec: RequestSpec, count: int, max_seconds: float) -> StreamMeasurement:
    """Stream `count` completions one after another (at most `max_seconds`), timing the first
    body chunk and the whole stream of each, client-side, from just before the request."""
    return trio.run(_stream_probe, spec, count, max_seconds)


async def _stream_probe(spec: RequestSpec, count: int, max_seconds: float) -> StreamMeasurement:
    result = StreamMeasurement(streams=0, errors=0, error_detail={})
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + max_seconds
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            result.streams += 1
            sent = time.perf_counter()
            first: float | None = None
            body = bytearray()
            try:
                async with client.stream(
                    "POST", spec.url, headers=spec.headers, content=spec.body
                ) as response:
                    async for chunk in response.aiter_raw():
                        if first is None:
                            first = time.perf_counter()
                        body += chunk
            except httpx.HTTPError as error:
                errors[type(error).__name__] += 1
                continue
            ended = time.perf_counter()
            problem = _answer_problem(response.status_code, bytes(body), stream=True)
            if problem is not None or first is None:
                errors[problem or "empty_body"] += 1
                continue
            result.first_chunk_ms.append((first - sent) * 1e3)
            result.total_ms.append((ended - sent) * 1e3)
    result.errors = sum(errors.values())
    result.error_detail = dict(errors)
    return result


def _answer_problem(status: int, body: bytes, stream: bool) -> str | None:
    """Why a response does not count as a good chat completion, or None if it does."""
    if status != 200:
        return f"status_{status}"
    if stream:
        if b"data: [DONE]" not in body or body.count(b"data: {") < 2:
            return "bad_stream"
    elif b'"choices"' not in body:
        return "bad_json"
    return None


def check_answer(spec: RequestSpec, timeout_s: float = 15.0) -> str:
    """Send `spec` once and return a short description of a correct answer, or raise
    BenchError with the status and body of a wrong one."""
    try:
        response = httpx.post(spec.url, headers=spec.headers, content=spec.body, timeout=timeout_s)
    except httpx.HTTPError as error:
        raise BenchError(f"{spec.url} could not be reached: {error!r}") from None
    problem = _answer_problem(response.status_code, response.content, spec.stream)
    content_type = response.headers.get("content-type", "")
    if problem is None and spec.stream and not content_type.startswith("text/event-stream"):
        problem = f"content-type {content_type!r} instead of text/event-stream"
    if problem is not None:
        raise BenchError(
            f"{spec.url} gave a wrong {'streamed ' if spec.stream else ''}answer ({problem}): "
            f"{response.status_code} {response.text[:300]!r}"
        )
    if spec.stream:
        return f"200 {content_type}, {response.content.count(b'data: ')} events"
    return f"200 {content_type}, {len(response.content)} bytes"
