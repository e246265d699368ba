"""CPU time and memory of a process, read from ``/proc`` (Linux only).

Both processes of a benchmark read these: the runner reads the server's peak RSS before it
stops it, and the agents process reads the server's CPU time at the edges of a measured
window, so that no pipe or clock skew between processes enters the figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")  # units of utime/stime in /proc/<pid>/stat
KIB: Final = 1024  # /proc/<pid>/status reports memory in kB (KiB)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/status has no {key}")


def rss_bytes(pid: int) -> int:
    """Resident set size now (``VmRSS``), in bytes."""
    return _status_kib(pid, "VmRSS") * KIB


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size so far (``VmHWM``), in bytes."""
    return _status_kib(pid, "VmHWM") * KIB
