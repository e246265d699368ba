"""Scenario (g): the DLP scanner on a clean 2 KB structured payload, without any server.

Runs in the agents process like the other workloads (a fresh process per repetition), and
scans with the config the runner generated, so its DLP rules are the server's.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from .scenarios import DLP_PAYLOAD_BYTES, PAYLOAD_TEXT


def dlp_scan(config_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """(g): ``DlpScanner.from_config(config).scan(data)`` on a clean 2 KB structured payload."""
    try:
        dlp = importlib.import_module("mas.policy.dlp")
    except ModuleNotFoundError as exc:
        if exc.name != "mas.policy.dlp":
            raise
        return {"unavailable": "n/a in this build (no mas.policy.dlp)"}
    from mas.config import load_config

    config = load_config(config_path).config
    scanner = None
    for candidate in (config, config.gateway, config.gateway.dlp):
        try:
            scanner = dlp.DlpScanner.from_config(candidate)
            break
        except (TypeError, AttributeError):
            continue
    if scanner is None:
        return {"unavailable": "n/a in this build (DlpScanner.from_config(config) not found)"}
    data = dlp_payload()
    outcome = scanner.scan(data)  # the payload is clean: expect ALLOWED
    for _ in range(params["warmup"]):
        scanner.scan(data)
    iterations = params["iterations"]
    start = time.perf_counter()
    for _ in range(iterations):
        scanner.scan(data)
    return {
        "scan_time": (time.perf_counter() - start) / iterations,
        "payload_keys": len(data),
        "decision": str(getattr(outcome, "decision", outcome)),
        "scanner_config": type(candidate).__name__,
    }


def dlp_payload() -> dict[str, Any]:
    """The benchmark payload grown to ``DLP_PAYLOAD_BYTES`` of JSON with more text fields."""
    data: dict[str, Any] = {"i": 0, "text": PAYLOAD_TEXT}
    k = 0
    while len(json.dumps(data)) < DLP_PAYLOAD_BYTES:
        data[f"text{k}"] = PAYLOAD_TEXT
        k += 1
    last = f"text{k - 1}"
    data[last] = data[last][: len(data[last]) - (len(json.dumps(data)) - DLP_PAYLOAD_BYTES)]
    return data
