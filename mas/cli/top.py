"""``mas top [CONFIG]``: the running server, live, refreshed every second (plain ANSI).

One control connection asks for a snapshot each second; rates (messages/s in and
out, per agent too) and the routing latency quantiles are computed from two
consecutive snapshots, so they describe the last second. Keys: ``r`` sorts the
agents by rate, ``d`` by queue depth, ``q`` (or Ctrl-C) quits. Only ANSI escape
sequences every terminal, SSH session and tmux pane understands are used (the
alternate screen, cursor home, erase); the terminal is put back as it was on any
exit: ``q``, Ctrl-C, the server stopping, or an error.

The screen is ``render_top`` of two snapshots (pure), so it is tested without a
terminal too.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Final, Literal, TextIO

from ..config import load_config
from ..control import socket_path
from ..control.client import ControlClient
from ..control.protocol import AgentRow, StatusReply, StatusRequest, StatusSnapshot
from ..errors import ControlError
from .exits import EXIT_OK
from .status import duration, instances, quantile, store_line, table, unknown

REFRESH_INTERVAL: Final = 1.0  # seconds between snapshots
Sort = Literal["rate", "depth"]

_ENTER: Final = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide the cursor
_LEAVE: Final = "\x1b[?25h\x1b[?1049l"  # show the cursor, back to the main screen
_HOME: Final = "\x1b[H"
_ERASE_LINE: Final = "\x1b[K"
_ERASE_BELOW: Final = "\x1b[J"


def _rate(now: int, before: int, seconds: float) -> float:
    return max(0, now - before) / seconds if seconds > 0 else 0.0


def _ms(seconds: float | None, top: float) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f">{top * 1000:g}ms"
    return f"{seconds * 1000:g}ms"


def render_top(
    current: StatusSnapshot,
    previous: StatusSnapshot | None,
    sort: Sort,
    *,
    width: int = 100,
    height: int = 40,
) -> list[str]:
    """The lines of one screen: totals, refusals, then one row per agent, sorted."""
    seconds = current.time - previous.time if previous is not None else 0.0
    before = {row.agent_id: row for row in previous.agents} if previous is not None else {}

    def rates(row: AgentRow) -> tuple[float, float]:
        old = before.get(row.agent_id)
        if old is None:
            return 0.0, 0.0
        return _rate(row.sent, old.sent, seconds), _rate(row.delivered, old.delivered, seconds)

    total_in = sum(rates(row)[0] for row in current.agents)
    total_out = sum(rates(row)[1] for row in current.agents)
    latency = current.latency
    counts = latency.counts
    if previous is not None and len(previous.latency.counts) == len(counts):
        counts = [max(0, a - b) for a, b in zip(counts, previous.latency.counts, strict=True)]
    top_bound = latency.bounds[-1] if latency.bounds else 0.0
    p50 = _ms(quantile(latency.bounds, counts, 0.50), top_bound)
    p99 = _ms(quantile(latency.bounds, counts, 0.99), top_bound)
    clock = time.strftime("%H:%M:%S", time.localtime(current.time))
    lines = [
        f"mas top  {current.server_id}  up {duration(current.uptime)}  {current.listen}  {clock}",
        f"store {store_line(current)}",
        f"in {total_in:,.1f} msg/s   out {total_out:,.1f} msg/s   routing p50 {p50}  p99 {p99}"
        f"   sessions {current.sessions}",
    ]
    old_refusals = {(r.decision, r.reason): r.count for r in previous.refusals} if previous else {}
    refusals = [
        f"{r.decision} {r.reason or '-'} "
        f"{_rate(r.count, old_refusals.get((r.decision, r.reason), r.count), seconds):,.1f}/s"
        f" ({r.count} in all)"
        for r in current.refusals
    ]
    lines.append("refused " + ("; ".join(refusals) if refusals else "none"))
    lines += [f"breaker {breaker.target_id}: {breaker.state}" for breaker in current.breakers]
    lines.append(f"sorted by {sort}   keys: r rate  d depth  q quit")
    lines.append("")

    def key(row: AgentRow) -> tuple[float, str]:
        if sort == "depth":
            return (-(row.queue_depth or 0), row.agent_id)
        sent, delivered = rates(row)
        return (-(sent + delivered), row.agent_id)

    header = ("AGENT", "INST", "IN/S", "OUT/S", "QUEUE", "IN FLIGHT", "RETRY", "DLQ", "REFUSED")
    rows = []
    for row in sorted(current.agents, key=key):
        sent, delivered = rates(row)
        rows.append(
            (
                row.agent_id,
                instances(row),
                f"{sent:,.1f}",
                f"{delivered:,.1f}",
                unknown(row.queue_depth),
                str(row.in_flight),
                str(row.retrying),
                unknown(row.dead_letters),
                str(row.refused),
            )
        )
    lines += table(header, rows)
    return [line[:width] for line in lines[:height]]


def _fetch(client: ControlClient) -> StatusSnapshot:
    reply = client.request(StatusRequest())
    assert isinstance(reply, StatusReply)
    return reply.status


@contextlib.contextmanager
def _terminal(out: TextIO) -> Iterator[int | None]:
    """Keys one at a time without echo (cbreak: Ctrl-C still interrupts); restored after.

    Yields the fd to read keys from, or None when stdin is not a terminal.
    """
    fd: int | None = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = None
    if fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    out.write(_ENTER)
    out.flush()
    try:
        yield fd
    finally:
        out.write(_LEAVE)
        out.flush()
        if fd is not None and saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _draw(out: TextIO, lines: list[str]) -> None:
    out.write(_HOME + "".join(line + _ERASE_LINE + "\r\n" for line in lines) + _ERASE_BELOW)
    out.flush()


def run(args: argparse.Namespace) -> int:
    """Show the server started from the config until ``q`` or Ctrl-C; the exit status."""
    loaded = load_config(args.config)
    out = sys.stdout
    client = ControlClient(socket_path(loaded), config_path=loaded.path)
    client.connect()  # no server: say so before touching the terminal
    sort: Sort = "rate"
    previous: StatusSnapshot | None = None
    try:
        with client, _terminal(out) as keys:
            current = _fetch(client)
            while True:
                size = shutil.get_terminal_size((100, 40))
                _draw(
                    out, render_top(current, previous, sort, width=size.columns, height=size.lines)
                )
                deadline = time.monotonic() + REFRESH_INTERVAL
                while (remaining := deadline - time.monotonic()) > 0:
                    if keys is None:
                        time.sleep(remaining)
                        break
                    ready, _, _ = select.select([keys], [], [], remaining)
                    if not ready:
                        break
                    pressed = os.read(keys, 32).decode(errors="replace").lower()
                    if "q" in pressed:
                        return EXIT_OK
                    if "r" in pressed or "d" in pressed:
                        sort = "depth" if pressed.rstrip()[-1:] == "d" else "rate"
                        _draw(
                            out,
                            render_top(
                                current, previous, sort, width=size.columns, height=size.lines
                            ),
                        )
                previous, current = current, _fetch(client)
    except KeyboardInterrupt:  # Ctrl-C is how people leave top: a normal exit
        return EXIT_OK
    except ControlError as exc:
        raise ControlError(f"{exc} (mas top stopped)") from exc
