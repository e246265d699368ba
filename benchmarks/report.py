"""The table (median, min and max of the repetitions, against the reference) and the JSON file.

Two ratios: ``ratio`` against the reference as PERFORMANCE.md gives it, and ``at floor``
against the reference scaled by this run's floor. The reference was measured on a day when an
echo round trip on an open purerpc mTLS stream took ``REFERENCE_FLOOR_RTT``; this machine's
speed varies by a factor of two from day to day for both systems, so a run whose floor took
twice as long scales the reference's rates by 1/2 and its times by 2 before dividing. Only
rates (``/s``) and times (``ms``) are scaled; memory and counts are not. The scaling is an
estimate, not a measurement of the reference: on 2026-12-01 the floor took 1,188 us (3.2x the
reference day's) while the reference itself, run that day, was only about 2.2x slower, so an
``at floor`` ratio may overstate ours by up to about 1.5x; ``ratio`` understates it on a slow
day. Only a side-by-side run of both systems gives the true ratio.

Rows come store by store, in scenario order; store-independent scenarios (g) come last with
the store ``-``. A store that ``mas check`` refused is one row saying so, never a number.
Text rows (``n/a ...``, ``failed: ...``) fill the value columns.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .scenarios import Metric, Scenario

Row = tuple[str, ...]
HEADER: Row = (
    "scenario",
    "store",
    "median",
    "min",
    "max",
    "unit",
    "reference",
    "ratio",
    "at floor",
)
NO_STORE = "-"
REFERENCE_FLOOR_RTT: Final = 370e-6  # seconds: the echo round trip of PERFORMANCE.md's day


def floor_speed(records: Sequence[dict[str, Any]]) -> float | None:
    """This run's speed against the reference's day: ``REFERENCE_FLOOR_RTT`` / the run's floor
    round trip (below 1 on a slower day), or None without a floor (scenario 0) in the run."""
    rtt = _median_of(records, "floor", NO_STORE, "echo_rtt")
    return None if not rtt else REFERENCE_FLOOR_RTT / rtt


def _at_floor(metric: Metric, median: float, speed: float | None) -> str:
    """The ratio against the reference scaled by the run's floor ("" where it does not apply)."""
    if speed is None or metric.reference is None:
        return ""
    if metric.unit.endswith("/s"):
        return f"{median / (metric.reference * speed):.2f}"
    if metric.unit == "ms":
        return f"{median / (metric.reference / speed):.2f}"
    return ""


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _metric_rows(
    metric: Metric,
    store: str,
    reps: Sequence[dict[str, Any]],
    note: str,
    speed: float | None = None,
) -> list[Row]:
    label = metric.label
    if metric.stores is not None and store not in metric.stores:
        return [(label, store, metric.elsewhere)] if metric.elsewhere else []
    done = [r for r in reps if "result" in r and "error" not in r]
    failed = [r for r in reps if "error" in r]
    if not done:
        reason = failed[0]["error"].splitlines()[0] if failed else "not run"
        return [(label, store, f"failed: {reason}")]
    unavailable = done[0]["result"].get("unavailable")
    if unavailable:
        return [(label, store, unavailable)]
    values = [r["result"].get(metric.key) for r in done]
    if any(v is None for v in values):
        return [(label, store, note or "n/a in this build")]
    scaled = [v * metric.scale for v in values]
    median = statistics.median(scaled)
    reference = "" if metric.reference is None else _fmt(metric.reference)
    ratio = "" if metric.reference is None else f"{median / metric.reference:.2f}"
    suffix = f" ({len(failed)} failed)" if failed else ""
    return [
        (
            label,
            store,
            _fmt(median),
            _fmt(min(scaled)),
            _fmt(max(scaled)),
            metric.unit + suffix,
            reference,
            ratio,
            _at_floor(metric, median, speed),
        )
    ]


def table_rows(
    scenarios: Sequence[Scenario],
    stores: Sequence[str],
    availability: dict[str, str | None],
    repetitions: Sequence[dict[str, Any]],
) -> list[Row]:
    """The table's rows. ``availability[store]`` is None when usable, else why not."""
    speed = floor_speed(repetitions)

    def reps(job: str, store: str) -> list[dict[str, Any]]:
        return [r for r in repetitions if r["job"] == job and r["store"] == store]

    rows: list[Row] = []
    for store in stores:
        reason = availability.get(store)
        if reason is not None:
            short = reason.splitlines()[0] if reason else ""
            short = short if len(short) <= 90 else short[:87] + "..."
            rows.append(("*", store, f"store {store}: not available in this build ({short})"))
            continue
        for scenario in scenarios:
            if scenario.stores == ():
                continue
            if scenario.stores is not None and store not in scenario.stores:
                if scenario.note:
                    rows.append((scenario.metrics[0][1].label, store, "n/a (redis store only)"))
                continue
            for job, metric in scenario.metrics:
                rows += _metric_rows(metric, store, reps(job, store), scenario.note, speed)
    redis_usable = "redis" in stores and availability.get("redis") is None
    for scenario in scenarios:
        if scenario.stores == ():
            for job, metric in scenario.metrics:
                rows += _metric_rows(metric, NO_STORE, reps(job, NO_STORE), scenario.note, speed)
        elif scenario.note and scenario.stores is not None and not redis_usable:
            why = scenario.note if "redis" in stores else "not run (redis not in --stores)"
            rows.append((scenario.metrics[0][1].label, "redis", why))
    return rows


def render(rows: Sequence[Row]) -> str:
    """A plain-text table; a text row spans the value columns."""
    widths = [len(h) for h in HEADER]
    for row in rows:
        if len(row) == len(HEADER):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        else:
            widths[0], widths[1] = max(widths[0], len(row[0])), max(widths[1], len(row[1]))
    numeric = {2, 3, 4, 6, 7, 8}

    def line(row: Row) -> str:
        if len(row) != len(HEADER):
            return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}"
        cells = [
            f"{c:>{w}}" if i in numeric else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADER), rule, *(line(r) for r in rows)])


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write the run's document (settings, every repetition, the rows) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def _median_of(records: Sequence[dict[str, Any]], job: str, store: str, key: str) -> float | None:
    values = [
        r["result"][key]
        for r in records
        if r["job"] == job
        and r["store"] == store
        and "error" not in r
        and key in r.get("result", {})
    ]
    return statistics.median(values) if values else None


def ceiling_rows(
    stores: Sequence[str], records: Sequence[dict[str, Any]], sqlite_sync: str
) -> list[Row]:
    """(a) on each store against the ceiling the floor of the same run implies.

    A one-at-a-time request/reply is two round trips on open streams (requester -> server
    -> echo, echo -> server -> requester), so its ceiling is 1 / (2 x echo round trip),
    plus two durable commits (2 x fdatasync) on the SQLite store with ``sync: full``: the
    request's and the reply's accept each wait for one. No rows without a floor (scenario
    0) in the run.

    Beside it, each side's CPU per request against two echo round trips' (the floor's
    ``echo_server_cpu`` and ``echo_client_cpu``): how many times the transport alone
    the whole request/reply costs each process.
    """
    rtt = _median_of(records, "floor", NO_STORE, "echo_rtt")
    fsync = _median_of(records, "floor", NO_STORE, "fsync")
    echo_cpu = {
        side: _median_of(records, "floor", NO_STORE, f"echo_{side}_cpu")
        for side in ("server", "client")
    }
    if rtt is None or fsync is None:
        return []
    rows: list[Row] = []
    for store in stores:
        achieved = _median_of(records, "request-reply", store, "throughput")
        if achieved is None:
            continue
        durable = store == "sqlite" and sqlite_sync == "full"
        ceiling = 1.0 / (2 * rtt + (2 * fsync if durable else 0.0))
        how = "2 RTT + 2 fsync" if durable else "2 RTT"
        rows.append((f"a ceiling ({how})", store, _fmt(ceiling), "", "", "req/s", "", "", ""))
        share = 100.0 * achieved / ceiling
        rows.append(("a share of its ceiling", store, f"{share:.0f}", "", "", "%", "", "", ""))
        for process, side in (("server", "server"), ("agents", "client")):
            spent = _median_of(records, "request-reply", store, f"{process}_cpu_per_req")
            if spent is not None and echo_cpu[side]:
                times = f"{spent / (2 * echo_cpu[side]):.1f}"
                label = f"a {process} CPU / echo {side}'s for 2 RTT"
                rows.append((label, store, times, "", "", "x", "", "", ""))
    return rows
