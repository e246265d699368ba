"""``mas status [CONFIG] [--json]``: one screen about the running server, then exit.

Asks the server's control socket (``mas.control``) for a ``StatusSnapshot`` and
prints it: the server, its store and listener, each agent (configured and connected
instances, queue depth, in flight, retrying, dead letters, last activity), the
decisions of the last minute by kind, and the circuit breakers that are not closed.
``--json`` prints the snapshot as one JSON object (plus ``uptime``) for scripts.
The formatting helpers here are shared with ``mas top``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import msgspec

from ..config import LoadedConfig, load_config
from ..control import socket_path
from ..control.client import ControlClient
from ..control.protocol import AgentRow, StatusReply, StatusRequest, StatusSnapshot
from .exits import EXIT_OK


def fetch_status(loaded: LoadedConfig) -> StatusSnapshot:
    """The running server's snapshot; ``ControlError`` when none answers."""
    with ControlClient(socket_path(loaded), config_path=loaded.path) as client:
        reply = client.request(StatusRequest())
    assert isinstance(reply, StatusReply)
    return reply.status


def run(args: argparse.Namespace) -> int:
    """Print the status of the server started from the config; returns the exit status."""
    snapshot = fetch_status(load_config(args.config))
    print(status_json(snapshot) if args.json else render_status(snapshot), end="")
    return EXIT_OK


def status_json(snapshot: StatusSnapshot) -> str:
    """The snapshot as one line of JSON, with ``uptime`` (seconds) added."""
    data = msgspec.to_builtins(snapshot)
    data["uptime"] = round(snapshot.uptime, 3)
    return msgspec.json.encode(data).decode() + "\n"


def duration(seconds: float) -> str:
    """``1d02h``, ``3h04m``, ``5m06s``, ``7s``: two units at most."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def ago(when: float | None, now: float) -> str:
    return "-" if when is None else f"{duration(now - when)} ago"


def instances(row: AgentRow) -> str:
    """``connected/configured``; ``!`` for an agent mas.yaml no longer lists."""
    if not row.configured:
        return f"{row.connected}/! (not configured)"
    return f"{row.connected}/{row.instances}"


def unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def store_line(snapshot: StatusSnapshot) -> str:
    store = snapshot.store
    health = "reachable" if store.reachable else f"UNREACHABLE ({store.error})"
    return f"{store.backend} {store.where}: {health}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The bucket bound under which ``q`` of the observations fall (inf: above them all)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bound, count in zip([*bounds, math.inf], counts, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return math.inf


def milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f"> {1000 * 1.0:g} ms"
    return f"<= {seconds * 1000:g} ms"


def render_status(snapshot: StatusSnapshot) -> str:
    """The text ``mas status`` prints."""
    now = snapshot.time
    lines = [
        f"server     {snapshot.server_id} (pid {snapshot.pid}, mas {snapshot.version}), "
        f"up {duration(snapshot.uptime)}",
        f"config     {snapshot.config_path}",
        f"listening  {snapshot.listen or '(not yet)'} (mTLS); "
        f"{snapshot.sessions} session(s), {snapshot.connections} connection(s)",
        f"store      {store_line(snapshot)}",
    ]
    if snapshot.metrics_address:
        lines.append(f"metrics    http://{snapshot.metrics_address}/metrics")
    lines.append("")
    header = (
        "AGENT",
        "INSTANCES",
        "QUEUE",
        "IN FLIGHT",
        "RETRYING",
        "DEAD LETTERS",
        "SENT",
        "DELIVERED",
        "REFUSED",
        "LAST ACTIVITY",
    )
    rows = [
        (
            row.agent_id,
            instances(row),
            unknown(row.queue_depth),
            str(row.in_flight),
            str(row.retrying),
            unknown(row.dead_letters),
            str(row.sent),
            str(row.delivered),
            str(row.refused),
            ago(row.last_activity, now),
        )
        for row in snapshot.agents
    ]
    lines += table(header, rows) if rows else ["no agents configured or connected"]
    lines.append("")
    minute = snapshot.decisions_last_minute
    if minute:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(minute.items()))
        lines.append(f"last minute  {kinds}")
    else:
        lines.append("last minute  no decisions")
    if snapshot.breakers:
        for breaker in snapshot.breakers:
            since = time.strftime("%H:%M:%S", time.localtime(breaker.opened_at))
            lines.append(f"breaker      {breaker.target_id}: {breaker.state} (opened at {since})")
    else:
        lines.append("breakers     all closed")
    return "\n".join(lines) + "\n"
