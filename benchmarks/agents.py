"""The agent-side load process: ``python -m benchmarks.agents SPEC.json``.

One Trio process runs every agent of one repetition, each with its own certificate and its
own mTLS connection to the server process. The spec (written by the runner) names the
workload, its parameters, the server's address and pid, the PKI directory, the Redis URL when
the store is Redis, a deadline, and where to write the result::

    {"workload": "one_way", "params": {...}, "server_addr": "127.0.0.1:40123",
     "server_pid": 4242, "pki_dir": "...", "redis_url": null, "config_path": "...",
     "deadline": 240.0, "result_path": ".../result.json"}

The result file holds the workload's figures plus this process's peak RSS and CPU time, or
``{"error": ...}``. Exit status 0 when the workload finished, 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import trio

from . import dlp, floor, workloads

ASYNC_WORKLOADS = {
    "one_way": workloads.one_way,
    "request_reply": workloads.request_reply,
    "idle": workloads.idle,
}


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's workload under its deadline; the figures, or raise."""
    name, params = spec["workload"], spec["params"]
    if name == "dlp_scan":
        return dlp.dlp_scan(Path(spec["config_path"]), params)
    if name == "floor":  # its own echo server; the directory is where a store would live
        directory = Path(spec["result_path"]).parent
        return trio.run(floor.floor, Path(spec["pki_dir"]), directory, params)
    setup = workloads.Setup(
        server_addr=spec["server_addr"],
        server_pid=spec["server_pid"],
        pki_dir=Path(spec["pki_dir"]),
        redis_url=spec.get("redis_url"),
    )
    workload = ASYNC_WORKLOADS[name]

    async def bounded() -> dict[str, Any]:
        with trio.move_on_after(spec["deadline"]):
            return await workload(setup, params)
        raise TimeoutError(f"the job's deadline passed ({spec['deadline']:.0f} s in this process)")

    return trio.run(bounded)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which Trio's nurseries make."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.agents SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    # The SDK logs every connection at INFO; at 10,000 agents that is noise, not load.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.process_time()
    try:
        result = run_spec(spec)
        status = 0
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        leaves = _leaves(exc)
        for leaf in leaves[:3]:
            traceback.print_exception(leaf)
        result = {"error": "; ".join(sorted({f"{type(e).__name__}: {e}" for e in leaves}))}
        status = 1
    # ru_maxrss is in KiB on Linux.
    result["agents_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["agents_cpu"] = time.process_time() - started
    Path(spec["result_path"]).write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
