"""What Linux's /proc says about a process under test: CPU time, memory and open file
descriptors, summed over the process and its descendants (nginx's workers, LiteLLM's children).

Nothing here starts or stops processes; `targets.py` owns them.
"""

import os
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it (found through each process's parent id)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time, in seconds, used so far by `pid` and its live descendants."""
    total_ticks = 0
    for member in process_tree(pid):
        stat = _read_stat(member)
        if stat is not None:
            # Field N of stat(5) is [N - 3] here: utime (14) and stime (15).
            total_ticks += int(stat[11]) + int(stat[12])
    return total_ticks / _CLOCK_TICKS


def memory_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` memory field (VmRSS, VmHWM...) in KiB, summed over the tree."""
    total = 0
    for member in process_tree(pid):
        try:
            text = (_PROC / str(member) / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def open_fds(pid: int) -> int:
    """Open file descriptors of `pid` and its descendants (sockets included)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += len(os.listdir(_PROC / str(member) / "fd"))
        except OSError:
            continue
    return total


def _read_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the `(command name)`, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()
