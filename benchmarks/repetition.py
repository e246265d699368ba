"""One repetition in fresh processes, and the check of which stores the build accepts.

``run_repetition`` writes the mas.yaml, starts ``redis-server`` (for the Redis store), the
server and the agents process, waits for the agents' result under the job's deadline, reads
the server's peak RSS, and stops everything in reverse order, whatever happened. It returns a
record with ``result`` or ``error`` (plus the tails of the logs); it never raises for a
failure of the processes it ran.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import check_config, store_was_used, write_config
from .deploy import BenchError, Child, Server, redis_server, tail
from .scenarios import Job
from .workloads import roster


def store_availability(stores: list[str], work: Path, pki_dir: Path) -> dict[str, str | None]:
    """None for a store ``python -m mas check`` accepts, else why not.

    (Whether the server then really keeps its data there is checked after every repetition:
    see ``StoreUnusedError``.)
    """
    found: dict[str, str | None] = {}
    for store in stores:
        directory = work / f"check-{store}"
        directory.mkdir()
        try:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(redis_server(directory)) if store == "redis" else None
                config = write_config(
                    directory / "mas.yaml",
                    pki_dir=pki_dir,
                    agents=["sink"],
                    permissions=[],
                    store=store,
                    redis_url=url,
                )
                ok, message = check_config(config)
            found[store] = None if ok else message
        except BenchError as exc:
            found[store] = str(exc)
    return found


@dataclass(frozen=True)
class Options:
    """What every repetition of a run shares."""

    inflight: int
    disabled: tuple[str, ...]
    sqlite_sync: str | None = None  # the sqlite store's `sync` (None: its default)


class StoreUnusedError(BenchError):
    """``mas check`` accepted the store, but the server kept its data elsewhere."""


def run_repetition(
    job: Job,
    store: str,
    rep: int,
    work: Path,
    pki_dir: Path,
    options: Options,
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """One repetition in fresh processes; a record with ``result`` or ``error``."""
    directory = work / f"{store}-{job.name}-{rep}"
    directory.mkdir()
    params = {**job.params, "inflight": options.inflight}
    record: dict[str, Any] = {
        "job": job.name,
        "workload": job.workload,
        "store": store,
        "rep": rep,
        "params": params,
    }
    deadline = time.monotonic() + job.deadline
    server: Server | None = None
    agents: Child | None = None
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(redis_server(directory)) if store == "redis" else None
            ids, rules = roster(job.workload, params)
            config = write_config(
                directory / "mas.yaml",
                pki_dir=pki_dir,
                agents=ids,
                permissions=rules,
                store=store if job.needs_server else "memory",
                redis_url=url,
                disabled=options.disabled,
                sqlite_sync=options.sqlite_sync,
            )
            if job.needs_server:
                server = Server(config, profile)
                stack.callback(server.stop)
                server.wait_listening()
            spec = {
                "workload": job.workload,
                "params": params,
                "server_addr": server.address if server else "",
                "server_pid": server.pid if server else 0,
                "pki_dir": str(pki_dir),
                "redis_url": url,
                "config_path": str(config),
                "deadline": max(1.0, deadline - time.monotonic() - 2.0),
                "result_path": str(directory / "result.json"),
            }
            (directory / "spec.json").write_text(json.dumps(spec))
            argv = [sys.executable, "-m", "benchmarks.agents", str(directory / "spec.json")]
            agents = Child(argv, directory / "agents.log")
            stack.callback(agents.stop)
            status = agents.wait(max(1.0, deadline - time.monotonic()))
            result = json.loads((directory / "result.json").read_text())
            died = server is not None and server.proc.poll() is not None
            if server is not None:
                result["server_peak_rss"] = server.peak_rss()
            record["result"] = result
            if status != 0 or died:
                errors = [result.get("error") or f"agents exit status {status}"] if status else []
                raise BenchError("; ".join([*errors, *(["the server died"] if died else [])]))
            if job.needs_server and not store_was_used(store, directory, url):
                del record["result"]
                raise StoreUnusedError(
                    f"mas check accepts store {store}, but the server did not keep its data "
                    "there (a silent fallback?); nothing measured"
                )
        audit = directory / "audit.jsonl"
        if job.needs_server:
            record["audit_records"] = len(audit.read_bytes().splitlines()) if audit.exists() else 0
    except StoreUnusedError as exc:
        record["error"] = str(exc)
        record["store_unused"] = True
    except (BenchError, OSError, ValueError) as exc:
        logs = [c.log_path for c in (agents, server) if c is not None]
        record["error"] = f"{exc}\n" + "\n".join(f"--- {p.name}\n{tail(p)}" for p in logs)
    return record
