"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--scenarios a,c] ...``.

For every store (``--stores``) that ``python -m mas check`` accepts, every job of the selected
scenarios runs ``--repeat`` times, each repetition with a fresh server process (``python -m
mas serve``), a fresh agents process (``python -m benchmarks.agents``) and, for Redis, a fresh
``redis-server``. Then one table is printed and every repetition is written to
``bench-results/<timestamp>.json``.

Exit status: 0 when every repetition that could run finished, 1 when one failed or missed its
deadline, 2 for bad options. Scenarios the build cannot run yet (a store ``mas check``
refuses, DLP without ``mas.policy.dlp``) are reported as such and do not fail the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as a script: import `benchmarks` from the repository
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import report
from benchmarks.config import DISABLEABLE, pipeline_steps
from benchmarks.deploy import REPO
from benchmarks.repetition import Options, run_repetition, store_availability
from benchmarks.scenarios import ALL_KEYS, Job, Scenario, build
from benchmarks.workloads import roster

STORES = ("memory", "sqlite", "redis")
MESSAGE_WORKLOADS = ("one_way", "request_reply")  # the runs whose messages are audited
INFLIGHT = 32  # sends awaiting the server's accept, in total over the senders of (c) and (d)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition (CI)")
    parser.add_argument(
        "--scenarios", default=ALL_KEYS, help="e.g. 0,a,c (default: 0 (the floor) and a-h)"
    )
    parser.add_argument("--stores", default=",".join(STORES), help="default: memory,sqlite,redis")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the measured counts of 0 and a-d"
    )
    parser.add_argument("--inflight", type=int, default=INFLIGHT, help="sends in flight, c and d")
    parser.add_argument(
        "--idle-window",
        type=float,
        help="seconds of (f)'s idle window (default 10; the SDK's heartbeat comes after 120 s"
        " without traffic, so a window over 120 s includes every agent's heartbeat)",
    )
    parser.add_argument("--agents", help="agent counts of (f), e.g. 1000,10000")
    parser.add_argument(
        "--disable",
        default="",
        help=f"pipeline steps to switch off for an A/B run: {','.join(DISABLEABLE)}",
    )
    parser.add_argument(
        "--sqlite-sync",
        choices=("full", "normal"),
        help="the sqlite store's `sync` setting (default: the store's default, full)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="JSON directory")
    parser.add_argument(
        "--profile",
        choices=("cprofile", "py-spy"),
        help="run the server under a profiler; files go next to the JSON (see hotspots.py)",
    )
    return parser


def _usage_error(message: str) -> NoReturn:
    print(f"run.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _keys(text: str, allowed: str | tuple[str, ...], what: str) -> list[str]:
    keys = [k.strip() for k in text.replace(",", " ").split() if k.strip()]
    if len(keys) == 1 and what == "scenario" and len(keys[0]) > 1:
        keys = list(keys[0])  # --scenarios abc
    bad = [k for k in keys if k not in allowed]
    if bad or not keys:
        _usage_error(f"unknown {what}(s) {bad or text!r}; choose from {allowed}")
    return list(dict.fromkeys(keys))


def _progress(record: dict[str, Any], repeat: int, started: float) -> None:
    result = record.get("result", {})
    shown = {k: result[k] for k in ("throughput", "scan_time", "server_rss") if k in result}
    figures = ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
    outcome = result.get("unavailable") or figures
    if "error" in record:
        outcome = "FAILED: " + record["error"].splitlines()[0]
    print(
        f"  [{record['store']}] {record['job']} {record['rep'] + 1}/{repeat}: {outcome} "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def _jobs(scenarios: list[Scenario], store: str | None) -> list[Job]:
    """The jobs to run for ``store`` (None: the store-independent ones), each once."""
    jobs: dict[str, Job] = {}
    for scenario in scenarios:
        if store is None and scenario.stores != ():
            continue
        if store is not None and scenario.stores is not None and store not in scenario.stores:
            continue
        for job in scenario.jobs:
            jobs.setdefault(job.name, job)
    return list(jobs.values())


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        _usage_error("--repeat must be >= 1")
    repeat = args.repeat or (1 if args.quick else 3)
    if args.idle_window is not None and args.idle_window <= 0:
        _usage_error("--idle-window must be > 0")
    counts = None
    if args.agents:
        try:
            counts = tuple(int(k) for k in args.agents.split(","))
        except ValueError:
            _usage_error(f"--agents takes counts like 1000,10000, not {args.agents!r}")
        if any(k < 1 for k in counts):
            _usage_error("--agents counts must be >= 1")
    if args.scale <= 0:
        _usage_error("--scale must be > 0")
    if args.inflight < 1:
        _usage_error("--inflight must be >= 1")
    catalogue = build(
        quick=args.quick,
        idle_window=args.idle_window,
        agent_counts=counts,
        inflight=args.inflight,
        scale=args.scale,
    )
    scenarios = [catalogue[k] for k in sorted(_keys(args.scenarios, ALL_KEYS, "scenario"))]
    stores = _keys(args.stores, STORES, "store")
    disabled = tuple(_keys(args.disable, DISABLEABLE, "step")) if args.disable else ()
    options = Options(inflight=args.inflight, disabled=disabled, sqlite_sync=args.sqlite_sync)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in finally
    stamp = time.strftime("%Y%m%dT%H%M%S")
    steps = pipeline_steps()
    for step in disabled:
        steps[step] = "off (--disable)"
    load_before = os.getloadavg()
    print(f"pipeline: {', '.join(f'{k} {v}' for k, v in steps.items())}", file=sys.stderr)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mas-bench-") as tmp:
        work = Path(tmp)
        from mas.pki import write_dev_pki

        ids = {i for s in scenarios for j in s.jobs for i in roster(j.workload, j.params)[0]}
        pki_dir = work / "pki"
        write_dev_pki(pki_dir, sorted(ids))
        availability = store_availability(stores, work, pki_dir)
        # The floor first (it bounds the scenarios: measure it before the machine warms up
        # to the run), then every store's jobs, then the other store-independent ones.
        loose = _jobs(scenarios, None)
        plan = [(report.NO_STORE, j) for j in loose if j.workload == "floor"]
        plan += [(s, j) for s in stores if availability[s] is None for j in _jobs(scenarios, s)]
        plan += [(report.NO_STORE, j) for j in loose if j.workload != "floor"]
        for store, reason in availability.items():
            if reason is not None:
                print(f"store {store}: not available in this build ({reason})", file=sys.stderr)
        for store, job in plan:
            for rep in range(repeat):
                if availability.get(store) is not None:
                    break  # found unusable in an earlier repetition
                started = time.monotonic()
                profile = None
                if args.profile and job.needs_server:
                    suffix = "prof" if args.profile == "cprofile" else "txt"
                    args.out.mkdir(parents=True, exist_ok=True)
                    path = args.out / f"{stamp}-{store}-{job.name}-{rep + 1}.{suffix}"
                    profile = (args.profile, path)
                record = run_repetition(job, store, rep, work, pki_dir, options, profile)
                if profile is not None:
                    record["profile"] = str(profile[1])
                records.append(record)
                _progress(record, repeat, started)
                if record.get("store_unused"):
                    availability[store] = record["error"]
    rows = report.table_rows(scenarios, stores, availability, records)
    rows += report.ceiling_rows(stores, records, args.sqlite_sync or "full")
    table = report.render(rows)
    print(table)
    print(f"pipeline: {', '.join(f'{k} {v}' for k, v in steps.items())}")
    audited = [r.get("audit_records", 0) for r in records if r["workload"] in MESSAGE_WORKLOADS]
    print(f"audit file: records written in {sum(n > 0 for n in audited)} of {len(audited)} runs")
    before, after = load_before[0], os.getloadavg()[0]
    print(f"load average (1 min) before/after: {before:.2f}/{after:.2f} on {os.cpu_count()} CPUs")
    document = {
        "started": stamp,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        "repeat": repeat,
        "inflight": args.inflight,
        "scale": args.scale,
        "idle_window": args.idle_window,
        "agents": args.agents,
        "disabled": list(disabled),
        "sqlite_sync": args.sqlite_sync,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_before_after": [load_before, os.getloadavg()],
        "pipeline": steps,
        "stores": availability,
        "repetitions": records,
        "table": [list(r) for r in rows],
    }
    path = report.write_json(args.out / f"{stamp}.json", document)
    print(f"every repetition: {path}")
    failed = [r for r in records if "error" in r and not r.get("store_unused")]
    for record in failed:
        print(f"\n{record['store']} {record['job']} rep {record['rep'] + 1}: {record['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
