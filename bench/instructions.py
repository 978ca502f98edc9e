"""Instructions per request, counted by valgrind's callgrind: a figure that does not move with
the machine's load, for before/after comparisons of a hot-path change on a shared machine.

    .venv/bin/python bench/instructions.py                              # this checkout
    .venv/bin/python bench/instructions.py --baseline OTHER/.venv/bin/python
    .venv/bin/python bench/instructions.py --governed                   # a key with every control

Each Sopy runs under `valgrind --tool=callgrind` with instrumentation off until it is configured
and warmed up (50 requests); then N sequential chat completions (default 300) are counted, all
of the process's threads included. The count includes the event loop's own ticks between
requests, and costs paid once per batch (the usage actor's write every second) are spread over
the requests of that second: at callgrind's pace (tens of requests a second) they weigh far more
than under load. Run to run, the figure repeats within about 1 %. Needs valgrind and nginx
(Debian: `apt-get install -y valgrind nginx`); about 15 s per target.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import targets

WARM_UP = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, metavar="N")
    parser.add_argument("--baseline", metavar="PYTHON", help="also count another venv's Sopy")
    parser.add_argument(
        "--governed", action="store_true", help="the key has every per-key control (generous)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None or targets.nginx_path() is None:
        print("needs valgrind and nginx: apt-get install -y valgrind nginx", file=sys.stderr)
        return 2
    pythons = {"sopy": sys.executable}
    if args.baseline:
        pythons["sopy-base"] = args.baseline
    workdir = Path(tempfile.mkdtemp(prefix="sopy-instructions-"))
    children = targets.Children(workdir)
    counts: dict[str, float] = {}
    try:
        upstream = targets.start_nginx(children)
        for name, python in pythons.items():
            counts[name] = _count(children, workdir, upstream.base_url, name, python, args)
            print(f"{name}: {counts[name] / 1e6:.3f} M instructions per request", flush=True)
            children.stop(name)
    finally:
        children.stop_all()
    if "sopy-base" in counts:
        ratio = counts["sopy"] / counts["sopy-base"]
        print(f"sopy/sopy-base instructions per request: {ratio:.3f}x")
    return 0


def _count(
    children: targets.Children,
    workdir: Path,
    upstream_url: str,
    name: str,
    python: str,
    args: argparse.Namespace,
) -> float:
    out = workdir / f"{name}.callgrind"
    wrapper = workdir / f"{name}-valgrind.sh"
    wrapper.write_text(
        "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no "
        f'--callgrind-out-file={out} {python} "$@"\n'
    )
    wrapper.chmod(0o700)
    target = targets.start_sopy(
        children, upstream_url, name=name, python=str(wrapper), governed=args.governed
    )
    spec = target.plain_request()
    with httpx.Client(timeout=120) as client:

        def send() -> None:
            client.post(spec.url, headers=spec.headers, content=spec.body).raise_for_status()

        for _ in range(WARM_UP):
            send()
        _control(target.pid, "--instr=on")
        _control(target.pid, "--zero")
        for _ in range(args.requests):
            send()
        _control(target.pid, "--dump")
    dumps = sorted(workdir.glob(f"{name}.callgrind*"), key=os.path.getmtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / args.requests
    raise targets.BenchError(f"no totals in {dumps[-1]}")


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
