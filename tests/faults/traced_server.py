"""``python traced_server.py OUT_DIR WARMUP END serve CONFIG``: a server under tracemalloc.

Runs ``mas.cli.main`` with ``tracemalloc`` on (8 frames). A thread logs the
traced size every 10 s to ``OUT_DIR/traced.txt``, takes a snapshot once
``WARMUP`` seconds have passed and another at ``END`` seconds (the server still
serving; each after ``gc.collect()``, so cyclic garbage is not taken for
growth), and writes the top 20 growing allocation sites between the two (by
line, then by traceback) to ``OUT_DIR/growth.txt``; at exit, ``growth-exit.txt``
compares the warm-up snapshot with one taken after the server stopped (what
outlives its connections). Used by the soak test to find what grows;
tracemalloc makes the server slower and larger, so its RSS is not the figure
the soak asserts on.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from mas.cli import main

FRAMES = 8
TOP = 20


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot()


def _watch(
    out: Path, warmup: float, end: float, stop: threading.Event, first: list[tracemalloc.Snapshot]
) -> None:
    began = time.monotonic()
    done = False
    with (out / "traced.txt").open("a") as log:
        while not stop.wait(10.0):
            elapsed = time.monotonic() - began
            current, peak = tracemalloc.get_traced_memory()
            log.write(f"{elapsed:.0f} {current} {peak}\n")
            log.flush()
            if not first and elapsed >= warmup:
                first.append(_snapshot())
            elif first and not done and elapsed >= end:
                (out / "growth.txt").write_text(_growth(first[0], _snapshot()))
                done = True


def _growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> str:
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    lines = [f"top {TOP} growing allocation sites by line (after warm-up):"]
    lines += [str(stat) for stat in after.compare_to(before, "lineno")[:TOP]]
    lines.append(f"\ntop {TOP // 2} growing tracebacks:")
    for stat in after.compare_to(before, "traceback")[: TOP // 2]:
        lines.append(f"\n{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks:")
        lines += [f"    {frame}" for frame in stat.traceback.format()]
    return "\n".join(lines) + "\n"


def run() -> int:
    out, warmup, end = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    args = sys.argv[4:]
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    stop, first = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(out, warmup, end, stop, first), daemon=True)
    watcher.start()
    try:
        return main(args)
    finally:
        stop.set()
        watcher.join(timeout=15)
        if first:
            (out / "growth-exit.txt").write_text(_growth(first[0], _snapshot()))


if __name__ == "__main__":
    raise SystemExit(run())
