"""Sopy's benchmark, in one command: `python bench/run.py [--quick] [--with-litellm] [--soak [N]]`.

This module owns the command line and the order of events: start the upstream, Sopy (and
LiteLLM), check that each answers correctly, warm them up, then run the load interleaved
(direct, sopy, litellm, direct, sopy, ... for each concurrency level and round, so that machine
noise hits every target alike), the streaming probe, or the soak; finally write the reports
and print the table, with the ratios last. See bench/README.md for how to read the numbers.
"""

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import procstat
import report
import soak
import targets
from load import (
    BENCH_DIR,
    BenchError,
    LoadMeasurement,
    StreamMeasurement,
    check_answer,
    percentile,
    run_python_load,
    run_stream_probe,
    run_wrk,
    wrk_path,
)
from targets import Children, Target

DEFAULT_SOAK_REQUESTS = 500_000
_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


def _concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,16,64, got {text!r}") from None
    if not levels or any(level < 1 or level > 1024 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be between 1 and 1024")
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark Sopy against the upstream it fronts (and optionally LiteLLM), "
        "on loopback. Writes JSON, Markdown and a PNG chart under bench/results/.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: a few hundred requests against the mock upstream with the "
        "built-in Python load generator (needs neither nginx nor wrk)",
    )
    parser.add_argument(
        "--with-litellm",
        action="store_true",
        help="also benchmark the LiteLLM proxy (installed on demand in bench/.litellm-venv)",
    )
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        default=None,
        help="also benchmark the Sopy installed in another Python (e.g. the venv of a checkout "
        "of the commit before a change), as target sopy-base, for a same-run before/after",
    )
    parser.add_argument(
        "--workers-compare",
        action="store_true",
        help="also run Sopy with --workers 2 (sopy-w2, and sopy-governed-w2 beside the governed "
        "lane), interleaved with the one-process targets; concurrency 16 and 64 unless given",
    )
    parser.add_argument(
        "--no-governed",
        action="store_true",
        help="skip the governed lane (sopy-governed: a key with every per-key control set, "
        "generous, never hit, and /metrics by key scraped every second)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=DEFAULT_SOAK_REQUESTS,
        default=None,
        metavar="N",
        help=f"instead of the comparison, soak Sopy with N mixed requests "
        f"(default {DEFAULT_SOAK_REQUESTS:,}) and report its RSS growth",
    )
    parser.add_argument(
        "--soak-max-seconds", type=float, default=600, help="time cap of the soak; default 600"
    )
    parser.add_argument(
        "--soak-concurrency", type=int, default=16, help="connections during the soak; default 16"
    )
    parser.add_argument(
        "--sample-every", type=float, default=5, help="soak sampling period, s; default 5"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per wrk run; default 5"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds per level; default 3"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=None,
        help="comma-separated connection counts; default 1,16,64 (--quick: 1,8)",
    )
    parser.add_argument(
        "--upstream",
        choices=("nginx", "mock"),
        default=None,
        help="nginx (default) or the bundled Python mock upstream (default with --quick)",
    )
    parser.add_argument(
        "--loader",
        choices=("wrk", "python"),
        default=None,
        help="load generator: wrk (default) or the built-in Python one (default with --quick)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per run with the Python load generator; default 80 with --quick",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=None,
        help="streamed completions per target for first-chunk timing; default 300 (--quick: 20)",
    )
    parser.add_argument(
        "--warmup", type=float, default=2, help="warm-up seconds per target; default 2"
    )
    parser.add_argument(
        "--wrk-threads", type=int, default=2, help="wrk threads (at most the connections)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=BENCH_DIR / "results", help="default bench/results"
    )
    parser.add_argument(
        "--profile-sopy",
        action="store_true",
        help="run Sopy under cProfile and write its hottest functions next to the results "
        "(the profiler slows Sopy down: compare such numbers only with each other)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp directory with the process logs"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.upstream = args.upstream or ("mock" if quick else "nginx")
    args.loader = args.loader or ("python" if quick else "wrk")
    args.duration = args.duration or (10.0 if quick else 5.0)
    args.rounds = args.rounds or (1 if quick else 3)
    default_levels = [16, 64] if args.workers_compare else [1, 16, 64]
    args.concurrency = args.concurrency or ([1, 8] if quick else default_levels)
    args.requests = args.requests or (80 if quick else 1_000_000)
    args.streams = args.streams if args.streams is not None else (20 if quick else 300)
    if quick:
        args.warmup = min(args.warmup, 0.5)
    if args.soak is not None and args.soak < 1:
        parser.error("--soak N needs N >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="sopy-bench-", dir="/tmp"))
    children = Children(workdir)
    failed = True
    try:
        code = _run(args, children)
        failed = code != 0
        return code
    except BenchError as error:
        print(f"\nbench: error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping the processes it started", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if args.keep_logs or failed or children.keep_logs:
            print(f"process logs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, children: Children) -> int:
    started_at = datetime.now(UTC)
    notes: list[str] = []
    if args.loader == "wrk" and wrk_path() is None:
        raise BenchError(
            "wrk not found: apt-get install -y wrk (or run with --quick, or --loader python "
            "whose own overhead makes the numbers far less meaningful)"
        )
    machine = report.machine_info()
    progress(
        f"machine: {machine['cpus']} CPUs, load average {machine['load_average'][0]}; "
        f"temp dir {children.workdir}"
    )
    upstream_kind = args.upstream
    if upstream_kind == "nginx" and targets.nginx_path() is None:
        warning = (
            "nginx not found (apt-get install -y nginx): falling back to `sopy mock-upstream`, "
            "a Python server that will itself be the bottleneck of the direct numbers"
        )
        print(f"WARNING: {warning}", flush=True)
        notes.append(warning)
        upstream_kind = "mock"
    progress(f"starting the upstream ({upstream_kind})")
    direct = (
        targets.start_nginx(children)
        if upstream_kind == "nginx"
        else targets.start_mock_upstream(children)
    )
    progress(f"upstream listening at {direct.base_url}; starting sopy serve")
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    profile_path = None
    if args.profile_sopy:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        profile_path = (args.results_dir / f"bench-{stamp}-sopy.pstats").resolve()
        notes.append(
            "Sopy ran under cProfile (--profile-sopy), which slows it down: its numbers are "
            f"comparable only with other profiled runs; profile in {profile_path.name}"
        )
    sopy = targets.start_sopy(children, direct.base_url, profile_path)
    progress(f"sopy (pid {sopy.pid}) at {sopy.base_url}, configured over its admin socket")
    all_targets = [direct, sopy]
    if args.baseline is not None and args.soak is None:
        baseline = targets.start_sopy(
            children, direct.base_url, name="sopy-base", python=args.baseline
        )
        progress(f"baseline sopy (pid {baseline.pid}, {args.baseline}) at {baseline.base_url}")
        all_targets.append(baseline)
    scraper = None
    if not args.no_governed and args.soak is None:
        governed = targets.start_sopy(
            children, direct.base_url, name="sopy-governed", governed=True
        )
        progress(f"governed sopy (pid {governed.pid}) at {governed.base_url}")
        all_targets.append(governed)
        scraper = targets.MetricsScraper(governed.base_url + "/metrics")
    if args.workers_compare and args.soak is None:
        workers = targets.start_sopy(children, direct.base_url, name="sopy-w2", workers=2)
        progress(f"sopy --workers 2 (primary pid {workers.pid}) at {workers.base_url}")
        all_targets.append(workers)
        if not args.no_governed:
            governed_workers = targets.start_sopy(
                children, direct.base_url, name="sopy-governed-w2", governed=True, workers=2
            )
            progress(f"governed sopy --workers 2 (pid {governed_workers.pid})")
            all_targets.append(governed_workers)
    for target in all_targets:
        _sanity_check(target)
    if args.with_litellm:
        if args.soak is not None:
            notes.append("LiteLLM skipped: the soak drives Sopy alone")
            print(f"WARNING: {notes[-1]}", flush=True)
        elif upstream_kind != "nginx":
            notes.append("LiteLLM skipped: it needs the nginx upstream (its /stream/ path)")
            print(f"WARNING: {notes[-1]}", flush=True)
        else:
            try:
                litellm = targets.start_litellm(children, direct.base_url, progress)
                _sanity_check(litellm)
            except BenchError as error:
                children.stop("litellm")
                children.keep_logs = True
                message = f"LiteLLM could not be benchmarked, continuing without it: {error}"
                print(f"WARNING: {message}", flush=True)
                notes.append(message.splitlines()[0])
            else:
                all_targets.append(litellm)

    soak_result: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = []
    streams: dict[str, list[StreamMeasurement]] = {}
    if args.soak is not None:
        _warm_up(args, [sopy], args.soak_concurrency)
        soak_result = soak.run_soak(
            sopy,
            total_requests=args.soak,
            max_seconds=args.soak_max_seconds,
            concurrency=args.soak_concurrency,
            segment_s=args.sample_every,
            use_wrk=args.loader == "wrk",
            wrk_threads=args.wrk_threads,
            stream_every=4,
            progress=progress,
        )
    else:
        _warm_up(args, all_targets, max(args.concurrency))
        with scraper or contextlib.nullcontext():
            runs = _load_matrix(args, all_targets)
            streams = _stream_probes(args, all_targets)
        if scraper is not None:
            notes.append(
                f"sopy-governed: /metrics scraped {scraper.scrapes} times during the load "
                f"({scraper.failures} failed)"
            )

    memory = {
        t.name: {
            "pid": t.pid,
            "peak_rss_mib": round(procstat.memory_kib(t.pid, "VmHWM") / 1024, 2),
            "rss_mib": round(procstat.memory_kib(t.pid, "VmRSS") / 1024, 2),
            "open_fds": procstat.open_fds(t.pid),
            "cpu_s": round(procstat.cpu_seconds(t.pid), 2),
        }
        for t in all_targets
    }
    if profile_path is not None:
        children.stop("sopy")
        profile_text = report.profile_summary(profile_path)
        profile_path.with_suffix(".txt").write_text(profile_text)
        print(profile_text, flush=True)
        progress(f"wrote {profile_path} and {profile_path.with_suffix('.txt')}")
    summary = report.summarize_runs(runs)
    stream_summary = report.summarize_streams(streams)
    total_errors = (
        sum(r["errors"] for r in runs)
        + sum(r["errors"] for r in stream_summary)
        + (soak_result["errors"] if soak_result else 0)
    )
    total_requests = (
        sum(r["requests"] for r in runs)
        + sum(r["streams"] for r in stream_summary)
        + (soak_result["requests"] if soak_result else 0)
    )
    result: dict[str, Any] = {
        "stamp": stamp,
        "started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "elapsed_s": round(time.monotonic() - _STARTED, 1),
        "mode": "soak" if args.soak is not None else ("quick" if args.quick else "full"),
        "upstream": upstream_kind,
        "load_tool": args.loader,
        "targets": [t.name for t in all_targets],
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "requests": args.requests if args.loader == "python" else None,
            "streams": args.streams,
            "warmup_s": args.warmup,
            "wrk_threads": args.wrk_threads,
            "soak": args.soak,
        },
        "machine": machine,
        "total_requests": total_requests,
        "total_errors": total_errors,
        "summary": summary,
        "streaming": stream_summary,
        "ratios": report.ratios(summary),
        "memory": memory,
        "soak": soak_result,
        "runs": runs,
        "notes": notes,
    }
    written = report.write_reports(result, args.results_dir)
    print()
    print(report.render_markdown(result))
    for path in written:
        progress(f"wrote {path}")
    progress(f"{total_requests:,} requests in {result['elapsed_s']:.0f} s, {total_errors} errors")
    for line in report.ratio_lines(result):
        print(line)
    if total_errors:
        print(
            f"\nbench: {total_errors} requests failed; see error_detail in the runs of "
            f"{args.results_dir / 'latest.json'} and rerun with --keep-logs to read the logs",
            file=sys.stderr,
        )
        return 1
    return 0


def _sanity_check(target: Target) -> None:
    plain = check_answer(target.plain_request())
    stream = check_answer(target.stream_request())
    progress(f"{target.name}: plain {plain}; streaming {stream}")


def _measure(
    args: argparse.Namespace, target: Target, concurrency: int
) -> tuple[LoadMeasurement, float]:
    """One load run against `target`, and the CPU seconds its process tree used meanwhile."""
    cpu_before = procstat.cpu_seconds(target.pid)
    if args.loader == "wrk":
        measurement = run_wrk(
            target.plain_request(),
            target.stream_request(),
            concurrency=concurrency,
            duration_s=args.duration,
            threads=args.wrk_threads,
        )
    else:
        measurement = run_python_load(
            target.plain_request(),
            None,
            concurrency=concurrency,
            max_requests=args.requests,
            max_seconds=args.duration,
        )
    return measurement, procstat.cpu_seconds(target.pid) - cpu_before


def _warm_up(args: argparse.Namespace, chosen: list[Target], level: int) -> None:
    for target in chosen:
        progress(f"warming up {target.name} ({args.warmup:g} s at concurrency {level})")
        if args.loader == "wrk":
            run_wrk(
                target.plain_request(),
                target.stream_request(),
                concurrency=level,
                duration_s=max(1.0, args.warmup),
                threads=args.wrk_threads,
            )
        else:
            run_python_load(
                target.plain_request(),
                target.stream_request(),
                concurrency=level,
                max_requests=4 * level,
                max_seconds=args.warmup,
            )


def _load_matrix(args: argparse.Namespace, chosen: list[Target]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    total = len(args.concurrency) * args.rounds * len(chosen)
    budget = total * (args.duration + 0.5) if args.loader == "wrk" else None
    progress(
        f"load: {total} runs ({', '.join(t.name for t in chosen)} interleaved)"
        + (f", about {budget:.0f} s" if budget else "")
    )
    for concurrency in args.concurrency:
        for round_number in range(1, args.rounds + 1):
            for target in chosen:
                measurement, cpu = _measure(args, target, concurrency)
                runs.append(_run_record(target, round_number, measurement, cpu))
                per_request = cpu / measurement.requests * 1e3 if measurement.requests else 0.0
                errors = measurement.errors
                progress(
                    f"[{len(runs)}/{total}] c={concurrency:<3d} round {round_number}/"
                    f"{args.rounds} {target.name:<7s} {measurement.rps:8,.0f} req/s  "
                    f"p50 {measurement.p50_ms:7.2f} ms  p99 {measurement.p99_ms:7.2f} ms  "
                    f"CPU {per_request:6.3f} ms/req  "
                    + (f"{errors} ERRORS {measurement.error_detail}" if errors else "0 errors")
                )
    return runs


def _run_record(
    target: Target, round_number: int, measurement: LoadMeasurement, cpu_s: float
) -> dict[str, Any]:
    return {
        "target": target.name,
        "concurrency": measurement.concurrency,
        "round": round_number,
        "tool": measurement.tool,
        "requests": measurement.requests,
        "errors": measurement.errors,
        "error_detail": measurement.error_detail,
        "duration_s": round(measurement.duration_s, 3),
        "rps": round(measurement.rps, 1),
        "p50_ms": round(measurement.p50_ms, 3),
        "p90_ms": round(measurement.p90_ms, 3),
        "p99_ms": round(measurement.p99_ms, 3),
        "max_ms": round(measurement.max_ms, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_request": round(cpu_s / measurement.requests * 1e3, 4)
        if measurement.requests
        else None,
    }


def _stream_probes(
    args: argparse.Namespace, chosen: list[Target]
) -> dict[str, list[StreamMeasurement]]:
    results: dict[str, list[StreamMeasurement]] = {t.name: [] for t in chosen}
    if args.streams <= 0:
        return results
    per_round = max(1, args.streams // args.rounds)
    progress(f"streaming: {per_round} sequential streams per target per round, interleaved")
    for target in chosen:  # a few unrecorded streams first, for the connection pools
        run_stream_probe(target.stream_request(), 5, 10)
    for round_number in range(1, args.rounds + 1):
        for target in chosen:
            measurement = run_stream_probe(target.stream_request(), per_round, 60)
            results[target.name].append(measurement)
            first = percentile(measurement.first_chunk_ms, 50)
            total = percentile(measurement.total_ms, 50)
            progress(
                f"streams round {round_number}/{args.rounds} {target.name:<7s} "
                f"{measurement.streams} streams  first chunk p50 {first:6.2f} ms  "
                f"whole stream p50 {total:6.2f} ms  errors {measurement.errors}"
            )
    return results


if __name__ == "__main__":
    sys.exit(main())
