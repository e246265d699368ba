"""Where the server's time goes: ``python -m benchmarks.hotspots PROFILE [--top N]``.

Reads a profile written by ``run.py --profile``: ``py-spy`` raw collapsed stacks (``*.txt``)
or a ``cProfile`` file (``*.prof``), and prints the share of CPU time per layer of the
server, then the functions with the most self time.

Attribution: a py-spy sample goes to the layer of the innermost frame of its stack that
belongs to a known layer (so ``enum`` or ``random`` code called from h2 counts as HTTP/2); a
cProfile entry goes by its own file (its self time, ``tottime``). Both are estimates: py-spy
pauses the process to sample, and cProfile inflates pure-Python code relative to C code.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Final

# (layer, substrings of a frame "func (file:line)" or a cProfile "file:func"), checked in order.
LAYERS: Final = (
    (
        "TLS (ssl, OpenSSL, anyio TLSStream)",
        ("libssl", "libcrypto", "streams/tls.py", "ssl.py", "_ssl."),
    ),
    ("HTTP/2 framing (h2, hpack, hyperframe)", ("h2/", "hpack/", "hyperframe/")),
    (
        "gRPC (purerpc, mas.server.grpc)",
        ("purerpc/", "mas/_purerpc.py", "mas/server/grpc.py", "mas/server/transport.py"),
    ),
    ("protobuf", ("google/protobuf", "_pb2", "upb")),
    ("envelope JSON, ids (msgspec)", ("mas/envelope.py", "msgspec")),
    ("policy: ACL, rate limit, breaker, DLP", ("mas/policy/", "mas/server/gateway.py")),
    ("audit: records, hash chain, JSONL", ("mas/audit/", "mas/server/audit_log.py")),
    ("store (mas.store, sqlite3, redis-py)", ("mas/store/", "sqlite3", "redis/")),
    (
        "routing, sessions, delivery",
        (
            "mas/server/router.py",
            "mas/server/refusal.py",
            "mas/server/sessions.py",
            "mas/server/servicer.py",
            "mas/server/app.py",
        ),
    ),
    ("logging", ("logging/",)),
    ("socket syscalls", ("trio/_socket.py", "socket.py", "anyio/_backends")),
    ("trio scheduler, channels, locks", ("trio/", "anyio/", "outcome/")),
)
OTHER: Final = "other (interpreter, stdlib)"


HANDOFF: Final = "thread hand-offs: GIL release/re-acquire, futex, sem_post"
_HANDOFF_LEAVES: Final = ("pthread_cond_signal", "pthread_mutex", "sem_post", "sem_wait")


def layer_of(frame: str) -> str | None:
    if frame.startswith(_HANDOFF_LEAVES) or (frame.startswith("0x") and "(libc" in frame):
        return HANDOFF  # unresolved libc leaves sit under the GIL's release around syscalls
    for layer, needles in LAYERS:
        if any(needle in frame for needle in needles):
            return layer
    return None


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def _function(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def _task(frames: list[str]) -> str:
    """The coroutine a Trio task runs: the first frame under the scheduler's ``unrolled_run``
    that is not Trio's or anyio's own task plumbing."""
    runs = [i for i, f in enumerate(frames) if f.startswith("unrolled_run ")]
    if not runs:
        return "outside trio.run (start-up, shutdown, worker threads)"
    below = frames[runs[-1] + 1 :]
    if not below or "(trio/" in below[0]:
        return "the scheduler itself (trio._core)"
    for frame in below:
        if "(anyio/_core/_tasks.py" not in frame and "(anyio/_backends/" not in frame:
            return _function(frame)
    return _function(below[-1])


# Frames near a stack's leaf that mean "blocked, not running": the event loop's epoll_wait, and
# a futex under a lock or the GIL (py-spy --native cannot tell those from busy samples).
_WAITING: Final = (
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "PyThread_acquire_lock",
    "take_gil",
)
_WORKER: Final = ("Thread._bootstrap", "thread_run (")


class PySpyProfile:
    """A py-spy raw profile sorted into event-loop work, worker threads and waiting."""

    def __init__(self, path: Path) -> None:
        self.layers: Counter[str] = Counter()  # event-loop thread, busy samples by layer
        self.tasks: Counter[str] = Counter()  # event-loop thread, busy samples by Trio task
        self.leaves: Counter[str] = Counter()  # event-loop thread, busy samples by function
        self.workers: Counter[str] = Counter()  # worker threads, busy samples by layer
        self.waiting: Counter[str] = Counter()  # samples blocked (not CPU), by thread and kind
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if stack and count_text.isdigit():
                self._add(stack.split(";"), int(count_text))

    def _add(self, frames: list[str], count: int) -> None:
        worker = any(w in frames[0] or w in f for f in frames[:6] for w in _WORKER)
        thread = "worker threads" if worker else "event-loop thread"
        if frames[-1].startswith("epoll_wait"):
            self.waiting[f"{thread}: idle in epoll_wait"] += count
            return
        if any(w in f for f in frames[-3:] for w in _WAITING):
            self.waiting[f"{thread}: waiting for the GIL or a lock"] += count
            return
        found = next((lay for lay in map(layer_of, reversed(frames)) if lay is not None), OTHER)
        if worker:
            self.workers[found] += count
            return
        self.layers[found] += count
        self.tasks[_task(frames)] += count
        self.leaves[_function(frames[-1])] += count


def from_cprofile(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(self seconds per layer, self seconds per function) of a cProfile file."""
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for (file, line, func), (_, _, tottime, _, _) in stats.items():
        name = f"{func} ({_short(file)}:{line})"
        layers[layer_of(f"{_short(file)}:{func}") or OTHER] += tottime
        functions[name] += tottime
    return layers, functions


def _short(file: str) -> str:
    """A path from its package on (``.../site-packages/h2/x.py`` -> ``h2/x.py``)."""
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def render(title: str, counts: Counter[str], unit: str, top: int | None = None) -> Iterable[str]:
    total = sum(counts.values()) or 1
    yield f"{title} (total {total:,.4g} {unit})"
    for name, value in counts.most_common(top):
        yield f"  {100 * value / total:5.1f} %  {value:>10,.4g}  {name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotspots")
    parser.add_argument("profile", type=Path, help="a .txt (py-spy raw) or .prof (cProfile) file")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    args = parser.parse_args(argv)
    if args.profile.suffix == ".prof":
        layers, functions = from_cprofile(args.profile)
        print("\n".join(render("CPU by layer", layers, "s self time")))
        print("\n".join(render("Top functions by self time", functions, "s", args.top)))
        return 0
    profile = PySpyProfile(args.profile)
    print("\n".join(render("Samples not spent on the CPU", profile.waiting, "samples")))
    print("\n".join(render("Event-loop thread: busy samples by layer", profile.layers, "samples")))
    print("\n".join(render("Event-loop thread: by Trio task", profile.tasks, "samples", 12)))
    print(
        "\n".join(render("Event-loop thread: top functions", profile.leaves, "samples", args.top))
    )
    print("\n".join(render("Worker threads: busy samples by layer", profile.workers, "samples")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
