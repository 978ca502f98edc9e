"""The soak mode (`--soak N`): mixed plain and streaming load against Sopy in short segments
until N requests or a time cap, sampling Sopy's RSS and open file descriptors after each
segment (printed as progress), and reporting the RSS growth after warm-up.

Samples are taken between segments, when the load generator's connections are closed, so a
leak of sockets or memory shows as a rising line rather than as load-dependent noise.
"""

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procstat
from load import BenchError, LoadMeasurement, run_python_load, run_wrk
from targets import Target

WARMUP_SHARE = 0.1  # samples before this share of the requests are warm-up
SETTLE_S = 0.5


def run_soak(
    target: Target,
    *,
    total_requests: int,
    max_seconds: float,
    concurrency: int,
    segment_s: float,
    use_wrk: bool,
    wrk_threads: int,
    stream_every: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    plain, stream = target.plain_request(), target.stream_request()
    threads = max(1, min(wrk_threads, concurrency))
    started = time.monotonic()
    samples = [_sample(target.pid, 0.0, 0, 0)]
    done = errors = 0
    latency_p50: list[float] = []
    stopped_by = "count"
    progress(
        f"soak: {total_requests:,} requests (1 in {stream_every} streamed) at concurrency "
        f"{concurrency}, capped at {max_seconds:g} s; sampling every {segment_s:g} s"
    )
    while done < total_requests:
        left_s = max_seconds - (time.monotonic() - started)
        if left_s < 1:
            stopped_by = "time"
            break
        remaining = total_requests - done
        seconds = min(segment_s, left_s)
        measurement: LoadMeasurement
        if use_wrk:
            measurement = run_wrk(
                plain,
                stream,
                concurrency=concurrency,
                duration_s=seconds,
                threads=threads,
                mode="mix",
                stream_every=stream_every,
                stop_after_per_thread=math.ceil(remaining / threads),
            )
        else:
            measurement = run_python_load(
                plain,
                stream,
                concurrency=concurrency,
                max_requests=remaining,
                max_seconds=seconds,
                stream_every=stream_every,
            )
        if not Path(f"/proc/{target.pid}").exists():
            raise BenchError(
                f"{target.name} (pid {target.pid}) died during the soak after {done:,} requests; "
                "its log is in the run's temp directory (rerun with --keep-logs)"
            )
        time.sleep(SETTLE_S)  # let Sopy notice the closed client connections
        done += measurement.requests
        errors += measurement.errors
        latency_p50.append(measurement.p50_ms)
        sample = _sample(target.pid, time.monotonic() - started, done, errors)
        samples.append(sample)
        progress(
            f"soak: {sample['elapsed_s']:6.1f} s  {done:>9,}/{total_requests:,} requests  "
            f"{measurement.rps:7,.0f} req/s  p50 {measurement.p50_ms:6.2f} ms  "
            f"RSS {sample['rss_mib']:7.1f} MiB  fds {sample['fds']:4d}  errors {errors}"
        )
    return _summary(samples, total_requests, done, errors, concurrency, stream_every, stopped_by)


def _sample(pid: int, elapsed_s: float, requests: int, errors: int) -> dict[str, Any]:
    return {
        "elapsed_s": round(elapsed_s, 2),
        "requests": requests,
        "errors": errors,
        "rss_mib": round(procstat.memory_kib(pid, "VmRSS") / 1024, 2),
        "fds": procstat.open_fds(pid),
    }


def _summary(
    samples: list[dict[str, Any]],
    requested: int,
    done: int,
    errors: int,
    concurrency: int,
    stream_every: int,
    stopped_by: str,
) -> dict[str, Any]:
    loaded = samples[1:] or samples
    baseline = next((s for s in loaded if s["requests"] >= WARMUP_SHARE * done), loaded[0])
    final = samples[-1]
    growth = (final["rss_mib"] - baseline["rss_mib"]) / baseline["rss_mib"] * 100
    elapsed = final["elapsed_s"]
    return {
        "requested": requested,
        "requests": done,
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": round(done / elapsed, 1) if elapsed else 0.0,
        "concurrency": concurrency,
        "stream_every": stream_every,
        "stopped_by": stopped_by,
        "warmup_requests": baseline["requests"],
        "rss_start_mib": samples[0]["rss_mib"],
        "rss_baseline_mib": baseline["rss_mib"],
        "rss_final_mib": final["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "rss_growth_pct": round(growth, 2),
        "fds_start": samples[0]["fds"],
        "fds_baseline": baseline["fds"],
        "fds_final": final["fds"],
        "samples": samples,
    }
