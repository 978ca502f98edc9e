"""Turning measurements into results: per-target summaries (means over the interleaved
rounds), the overheads and ratios against the direct upstream and LiteLLM, and the files under
the results directory: `bench-<stamp>.json`, `.md`, `.png` plus `latest.*` copies.

The chart needs matplotlib (`pip install -e '.[bench]'`); without it the chart is skipped with a
note and everything else is still written.
"""

import io
import json
import os
import platform
import pstats
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from statistics import fmean
from typing import Any

from load import StreamMeasurement, percentile, wrk_path
from targets import nginx_path

_ORDER = {
    "direct": 0,
    "sopy": 1,
    "sopy-governed": 2,
    "sopy-w2": 3,
    "sopy-governed-w2": 4,
    "sopy-base": 5,
    "litellm": 6,
}
# Cores the workers projection is made for (bench/README.md).
PROJECTED_CORES = 16
_IDLE = "idle (epoll wait)"


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS and tool versions, recorded with every result."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        mem_kib = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024**2, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version(nginx_path(), "-v"),
        "wrk": _version(wrk_path(), "-v"),
    }


def _version(executable: str | None, flag: str) -> str | None:
    if executable is None:
        return None
    try:
        done = subprocess.run(
            [executable, flag], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0][:80] if text else None


def summarize_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, concurrency): throughput over all rounds together, latency
    percentiles as the mean of the rounds', added p50 against direct at the same concurrency."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["concurrency"]), []).append(run)
    rows: list[dict[str, Any]] = []
    for (target, concurrency), group in groups.items():
        requests = sum(r["requests"] for r in group)
        duration = sum(r["duration_s"] for r in group)
        cpu = sum(r["cpu_s"] for r in group)
        rows.append(
            {
                "target": target,
                "concurrency": concurrency,
                "rounds": len(group),
                "requests": requests,
                "errors": sum(r["errors"] for r in group),
                "rps": round(requests / duration, 1) if duration else 0.0,
                "p50_ms": round(fmean(r["p50_ms"] for r in group), 3),
                "p90_ms": round(fmean(r["p90_ms"] for r in group), 3),
                "p99_ms": round(fmean(r["p99_ms"] for r in group), 3),
                "cpu_ms_per_request": round(cpu / requests * 1e3, 4) if requests else None,
            }
        )
    rows.sort(key=lambda r: (r["concurrency"], _ORDER.get(r["target"], 9)))
    direct = {r["concurrency"]: r for r in rows if r["target"] == "direct"}
    for row in rows:
        base = direct.get(row["concurrency"])
        row["added_p50_ms"] = (
            round(row["p50_ms"] - base["p50_ms"], 3)
            if base is not None and row["target"] != "direct"
            else None
        )
    return rows


def summarize_streams(streams: dict[str, list[StreamMeasurement]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target, parts in streams.items():
        first = [x for p in parts for x in p.first_chunk_ms]
        total = [x for p in parts for x in p.total_ms]
        rows.append(
            {
                "target": target,
                "streams": sum(p.streams for p in parts),
                "errors": sum(p.errors for p in parts),
                "error_detail": _merge(p.error_detail for p in parts),
                "first_chunk_p50_ms": round(percentile(first, 50), 3),
                "first_chunk_p99_ms": round(percentile(first, 99), 3),
                "total_p50_ms": round(percentile(total, 50), 3),
                "total_p99_ms": round(percentile(total, 99), 3),
            }
        )
    rows.sort(key=lambda r: _ORDER.get(r["target"], 9))
    direct = next((r for r in rows if r["target"] == "direct"), None)
    for row in rows:
        row["first_chunk_overhead_ms"] = (
            round(row["first_chunk_p50_ms"] - direct["first_chunk_p50_ms"], 3)
            if direct is not None and row["target"] != "direct"
            else None
        )
    return rows


def _merge(details: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for detail in details:
        for name, count in detail.items():
            merged[name] = merged.get(name, 0) + count
    return merged


def ratios(summary: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Throughput ratios per concurrency: sopy/direct, sopy/litellm, litellm/direct, and
    sopy/sopy-base when a baseline ran."""
    by = {(r["target"], r["concurrency"]): r["rps"] for r in summary}
    out: dict[str, dict[str, float]] = {}
    pairs_measured = (
        ("sopy", "direct"),
        ("sopy", "litellm"),
        ("litellm", "direct"),
        ("sopy", "sopy-base"),
        ("sopy-governed", "sopy"),
        ("sopy-w2", "sopy"),
        ("sopy-governed-w2", "sopy-governed"),
    )
    for top, bottom in pairs_measured:
        pairs = {
            f"c{c}": float(f"{by[(top, c)] / by[(bottom, c)]:.4g}")
            for (t, c) in by
            if t == top and by.get((bottom, c))
        }
        if pairs:
            out[f"{top}/{bottom}"] = pairs
    return out


def ratio_lines(report: dict[str, Any]) -> list[str]:
    """The closing lines: Sopy/LiteLLM throughput at c16 first, then Sopy/direct."""
    found = report["ratios"]
    lines = []
    litellm = found.get("sopy/litellm", {})
    if litellm:
        key = "c16" if "c16" in litellm else next(iter(litellm))
        others = ", ".join(f"{k} {v:.3g}x" for k, v in litellm.items() if k != key)
        lines.append(
            f"Sopy/LiteLLM throughput at {key}: {litellm[key]:.3g}x"
            + (f" ({others})" if others else "")
        )
    else:
        lines.append("Sopy/LiteLLM: not measured (run with --with-litellm)")
    direct = found.get("sopy/direct", {})
    if direct:
        lines.append(
            "Sopy/direct throughput: " + ", ".join(f"{k} {v:.3g}x" for k, v in direct.items())
        )
    sopy = [r for r in report["summary"] if r["target"] == "sopy"]
    if sopy:
        lines.append(
            "Sopy added p50 latency vs direct: "
            + ", ".join(f"c{r['concurrency']} {r['added_p50_ms']:+.2f} ms" for r in sopy)
        )
    stream = next((r for r in report["streaming"] if r["target"] == "sopy"), None)
    if stream is not None and stream["first_chunk_overhead_ms"] is not None:
        overhead = stream["first_chunk_overhead_ms"]
        lines.append(f"Sopy streaming first-chunk overhead (p50): {overhead:+.2f} ms")
    baseline = found.get("sopy/sopy-base", {})
    if baseline:
        base_rows = [r for r in report["summary"] if r["target"] == "sopy-base"]
        lines.append(
            "Sopy/baseline throughput: " + ", ".join(f"{k} {v:.3g}x" for k, v in baseline.items())
        )
        lines.append(
            "Baseline added p50 latency vs direct: "
            + ", ".join(f"c{r['concurrency']} {r['added_p50_ms']:+.2f} ms" for r in base_rows)
        )
    lines.extend(governed_lines(report["summary"]))
    lines.extend(workers_lines(report["summary"]))
    return lines


def workers_lines(summary: list[dict[str, Any]]) -> list[str]:
    """`--workers 2` against one process, per concurrency: the throughput ratio (the issue's
    target: at least 1.5x on the 2-core machine, wrk and nginx sharing it), the CPU per request
    of each, and the governed lanes alike (what asking the primary's gate costs); then the
    projection for `PROJECTED_CORES` cores from the CPU per request of `--workers 2`."""
    rows = {(r["target"], r["concurrency"]): r for r in summary}
    lines = []
    for one, two in (("sopy", "sopy-w2"), ("sopy-governed", "sopy-governed-w2")):
        for concurrency in sorted(c for (t, c) in rows if t == two):
            single, several = rows.get((one, concurrency)), rows[(two, concurrency)]
            if single is None or not single["rps"]:
                continue
            ratio = several["rps"] / single["rps"]
            target = " (target at least 1.5x: " + ("met)" if ratio >= 1.5 else "NOT met)")
            lines.append(
                f"{two} vs {one} at c{concurrency}: throughput {ratio:.3g}x{target}; CPU per "
                f"request {several['cpu_ms_per_request']:.3f} vs "
                f"{single['cpu_ms_per_request']:.3f} ms"
            )
    cpu = [r["cpu_ms_per_request"] for r in summary if r["target"] == "sopy-w2"]
    if cpu and min(cpu) > 0:
        per_request = min(cpu)
        lines.append(
            f"Projection for {PROJECTED_CORES} cores running Sopy alone ({PROJECTED_CORES} "
            f"workers, load and upstream elsewhere): {PROJECTED_CORES} / {per_request:.3f} ms "
            f"= {PROJECTED_CORES * 1000 / per_request:,.0f} req/s"
        )
    return lines


def governed_lines(summary: list[dict[str, Any]]) -> list[str]:
    """The governed lane against the plain one, per concurrency: added p50 difference, CPU per
    request ratio, and the issue's targets (at c1, p50 within 0.05 ms; CPU at most +15 %)."""
    plain = {r["concurrency"]: r for r in summary if r["target"] == "sopy"}
    governed = {r["concurrency"]: r for r in summary if r["target"] == "sopy-governed"}
    lines = []
    for concurrency in sorted(set(plain) & set(governed)):
        p, g = plain[concurrency], governed[concurrency]
        if not p["cpu_ms_per_request"] or p["added_p50_ms"] is None or g["added_p50_ms"] is None:
            continue
        p50 = g["added_p50_ms"] - p["added_p50_ms"]
        cpu = g["cpu_ms_per_request"] / p["cpu_ms_per_request"]
        verdict = ""
        if concurrency == 1:
            met = p50 <= 0.05 and cpu <= 1.15
            verdict = " (target: p50 within +0.05 ms, CPU at most 1.15x: " + (
                "met)" if met else "NOT met)"
            )
        lines.append(
            f"Governed lane vs plain at c{concurrency}: added p50 {p50:+.3f} ms, "
            f"CPU per request {cpu:.3f}x{verdict}"
        )
    return lines


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    settings, machine = report["settings"], report["machine"]
    if report["mode"] == "soak":
        how = "soak of Sopy alone"
    else:
        per_run = (
            f"{settings['duration_s']:g} s"
            if report["load_tool"] == "wrk"
            else f"up to {settings['requests']} requests"
        )
        how = f"{per_run} per run x {settings['rounds']} round(s) per target and concurrency"
    lines = [
        f"# Sopy benchmark, {report['started_at']}",
        "",
        f"Upstream: **{report['upstream']}**; load: **{report['load_tool']}**, {how}; "
        f"run took {report['elapsed_s']:.0f} s.",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}, load average at start "
        f"{machine['load_average'][0]}. Numbers are only comparable within one run.",
        "",
    ]
    if report.get("chart"):
        lines += [f"![chart]({report['chart']})", ""]
    if report["summary"]:
        lines += ["## Non-streaming chat completions", ""]
        rows = [
            [
                r["target"],
                _cell(r["concurrency"]),
                _cell(r["rps"], 0),
                _cell(r["p50_ms"]),
                _cell(r["p99_ms"]),
                _cell(r["added_p50_ms"]),
                _cell(r["cpu_ms_per_request"], 3),
                _cell(r["errors"]),
            ]
            for r in report["summary"]
        ]
        header = [
            "target",
            "concurrency",
            "req/s",
            "p50 ms",
            "p99 ms",
            "added p50 vs direct, ms",
            "CPU ms/request",
            "errors",
        ]
        lines += [*_table(header, rows), ""]
    if report["streaming"]:
        lines += ["## Streaming (sequential streams, client-side timing)", ""]
        rows = [
            [
                r["target"],
                _cell(r["streams"]),
                _cell(r["first_chunk_p50_ms"]),
                _cell(r["first_chunk_p99_ms"]),
                _cell(r["total_p50_ms"]),
                _cell(r["first_chunk_overhead_ms"]),
                _cell(r["errors"]),
            ]
            for r in report["streaming"]
        ]
        header = [
            "target",
            "streams",
            "first chunk p50 ms",
            "first chunk p99 ms",
            "whole stream p50 ms",
            "first-chunk overhead vs direct, ms",
            "errors",
        ]
        lines += [*_table(header, rows), ""]
    if report["memory"]:
        lines += ["## Memory and file descriptors (process tree, at the end of the run)", ""]
        rows = [
            [
                name,
                _cell(m["peak_rss_mib"], 1),
                _cell(m["rss_mib"], 1),
                _cell(m["open_fds"]),
                _cell(m["cpu_s"], 1),
            ]
            for name, m in report["memory"].items()
        ]
        header = ["target", "peak RSS (VmHWM) MiB", "RSS MiB", "open fds", "CPU s in total"]
        lines += [*_table(header, rows), ""]
    if report["ratios"]:
        lines += ["## Ratios", ""]
        lines += [
            f"- {name} throughput: " + ", ".join(f"{k} **{v:.3g}x**" for k, v in values.items())
            for name, values in report["ratios"].items()
        ]
        lines.append("")
    if report["soak"]:
        soak = report["soak"]
        lines += [
            "## Soak",
            "",
            f"{soak['requests']:,} of {soak['requested']:,} requests (1 in {soak['stream_every']} "
            f"streamed, concurrency {soak['concurrency']}) in {soak['elapsed_s']:.0f} s "
            f"({soak['rps']:,.0f} req/s), stopped by {soak['stopped_by']}, "
            f"{soak['errors']:,} errors.",
            f"RSS: {soak['rss_start_mib']:.1f} MiB idle, {soak['rss_baseline_mib']:.1f} MiB after "
            f"warm-up ({soak['warmup_requests']:,} requests), {soak['rss_final_mib']:.1f} MiB at "
            f"the end (max {soak['rss_max_mib']:.1f}): **{soak['rss_growth_pct']:+.1f}%** growth "
            "after warm-up.",
            f"Open fds: {soak['fds_start']} idle, {soak['fds_baseline']} after warm-up, "
            f"{soak['fds_final']} at the end.",
            "",
        ]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def profile_summary(pstats_path: Path, top: int = 30) -> str:
    """The `top` functions of a cProfile dump by own time, then by cumulative time."""
    if not pstats_path.exists():
        return f"no profile was written to {pstats_path} (did Sopy exit cleanly on SIGTERM?)\n"
    out = io.StringIO()
    out.write(_time_by_package(pstats.Stats(str(pstats_path))))
    for order in ("tottime", "cumulative"):
        out.write(f"=== Sopy under cProfile, top {top} by {order} ===\n")
        stats = pstats.Stats(str(pstats_path), stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
    return out.getvalue()


def _time_by_package(stats: pstats.Stats) -> str:
    """Own (tottime) seconds summed per package, waiting in epoll shown apart as idle."""
    totals: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in raw.items():
        package = _package_of(filename, function)
        totals[package] = totals.get(package, 0.0) + own
    busy = sum(t for name, t in totals.items() if name != _IDLE)
    lines = [f"=== Sopy's own CPU-ish time by package ({busy:.2f} s busy under cProfile) ==="]
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        share = f"{seconds / busy * 100:5.1f}%" if busy and name != _IDLE else "     "
        lines.append(f"{seconds:9.3f} s  {share}  {name}")
    return "\n".join(lines) + "\n\n"


def _package_of(filename: str, function: str) -> str:
    if "epoll" in function and "poll" in function:
        return _IDLE
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "sopy" in parts:
        return "sopy"
    if filename == "~":
        return "builtins (C functions: socket, select, ...)"
    return "python stdlib / other"


def write_chart(report: dict[str, Any], path: Path) -> str | None:
    """p50 latency and throughput versus concurrency per target (or, for a soak, Sopy's RSS and
    open fds versus requests); returns why not if skipped."""
    if not report["summary"] and not report["soak"]:
        return "no runs to chart"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"
    if not report["summary"]:
        samples = report["soak"]["samples"]
        figure, rss_axes = plt.subplots(figsize=(9, 4.2))
        requests = [s["requests"] for s in samples]
        rss_axes.plot(requests, [s["rss_mib"] for s in samples], marker=".", label="RSS")
        rss_axes.set_xlabel("requests served")
        rss_axes.set_ylabel("RSS, MiB")
        rss_axes.set_ylim(bottom=0)
        fd_axes = rss_axes.twinx()
        fd_axes.plot(requests, [s["fds"] for s in samples], color="tab:orange", label="open fds")
        fd_axes.set_ylabel("open fds")
        fd_axes.set_ylim(bottom=0)
        handles = rss_axes.get_lines() + fd_axes.get_lines()
        rss_axes.legend(handles, [str(h.get_label()) for h in handles], loc="lower left")
        figure.suptitle(f"Sopy soak {report['started_at']} (upstream: {report['upstream']})")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return None
    figure, (latency_axes, rps_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    all_levels = sorted({r["concurrency"] for r in report["summary"]})
    targets = sorted({r["target"] for r in report["summary"]}, key=lambda t: _ORDER.get(t, 9))
    for target in targets:
        rows = [r for r in report["summary"] if r["target"] == target]
        levels = [r["concurrency"] for r in rows]
        latency_axes.plot(levels, [r["p50_ms"] for r in rows], marker="o", label=target)
        rps_axes.plot(levels, [r["rps"] for r in rows], marker="o", label=target)
    for axes, title, unit in (
        (latency_axes, "p50 latency", "ms"),
        (rps_axes, "throughput", "requests/s"),
    ):
        axes.set_xscale("log", base=2)
        axes.set_xticks(all_levels, [str(level) for level in all_levels])
        axes.minorticks_off()
        axes.set_yscale("log")
        axes.set_xlabel("concurrent connections")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.suptitle(f"Sopy benchmark {report['started_at']} (upstream: {report['upstream']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def write_reports(report: dict[str, Any], results_dir: Path) -> list[Path]:
    """Write the timestamped JSON, Markdown and PNG files and their `latest.*` copies (a soak's
    are `soak-<stamp>.*` and `latest-soak.*`, so that a soak never hides the last comparison)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    kind = "soak" if report["mode"] == "soak" else "bench"
    stem = f"{kind}-{report['stamp']}"
    chart = results_dir / f"{stem}.png"
    skipped = write_chart(report, chart)
    if skipped is None:
        report["chart"] = chart.name
    else:
        report["notes"].append(skipped)
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    written = [json_path, md_path] + ([chart] if skipped is None else [])
    for path in list(written):
        latest = results_dir / (("latest-soak" if kind == "soak" else "latest") + path.suffix)
        shutil.copyfile(path, latest)
        written.append(latest)
    return written
