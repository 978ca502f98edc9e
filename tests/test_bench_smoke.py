"""A smoke run of the benchmark harness: `python bench/run.py --quick` end to end.

Quick mode needs neither nginx nor wrk nor matplotlib: it puts `sopy mock-upstream` behind a real
`sopy serve` and drives both with the built-in Python load generator (a few hundred requests).
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICK_REQUESTS_PER_RUN = 80
QUICK_STREAMS = 20


def test_quick_benchmark_answers_every_request_and_writes_the_reports(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--results-dir", str(results)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((results / "latest.json").read_text())
    assert report["mode"] == "quick"
    assert report["total_errors"] == 0
    # The governed lane runs beside the plain one: a key with every control, /metrics scraped.
    targets = ("direct", "sopy", "sopy-governed")
    assert report["targets"] == list(targets)
    assert {(run["target"], run["concurrency"]) for run in report["runs"]} == {
        (target, level) for target in targets for level in (1, 8)
    }
    for run in report["runs"]:
        assert (run["requests"], run["errors"]) == (QUICK_REQUESTS_PER_RUN, 0), run
    for row in report["streaming"]:
        assert (row["streams"], row["errors"]) == (QUICK_STREAMS, 0), row
        assert 0 < row["first_chunk_p50_ms"] <= row["total_p50_ms"]
    assert report["total_requests"] == 6 * QUICK_REQUESTS_PER_RUN + 3 * QUICK_STREAMS
    assert report["memory"]["sopy"]["peak_rss_mib"] > 0
    assert "sopy/direct" in report["ratios"]
    assert "sopy-governed/sopy" in report["ratios"]
    assert "Governed lane vs plain at c1" in done.stdout

    markdown = (results / "latest.md").read_text()
    assert markdown.startswith("# Sopy benchmark")
    assert "| sopy | 8 |" in markdown
    assert len(list(results.glob("bench-*.json"))) == 1
    assert len(list(results.glob("bench-*.md"))) == 1
