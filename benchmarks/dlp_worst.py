"""The DLP scan's worst cases against its time budget (issue 14).

Run: ``python benchmarks/dlp_worst.py``. Scans each constructed payload once with the
gateway's settings (the default rules, a budget of ``mas.server.gateway.DLP_BUDGET`` seconds
of this thread's CPU time) and prints the CPU time the scan took, its decision and the rules
that decided. A payload that reaches the budget is blocked with ``scan_budget``; the figure
then says by how much the scan overran it. Nothing is asserted: speed is measured here,
never in a test.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from mas.config import DlpConfig
from mas.policy.dlp import DlpScanner
from mas.server.gateway import DLP_BUDGET


def payloads() -> dict[str, tuple[dict[str, Any], str | None]]:
    """name -> (payload, message type)."""
    return {
        "66 KB of pwd=": ({"v": "pwd=" * 16_500}, None),
        "1 MB of password=": ({"v": "password=" * 116_000}, None),
        "1 MB of pass=": ({"v": "pass=" * 200_000}, None),
        "1 MB of mrn": ({"v": "mrn" * 330_000}, None),
        "1 MB of '4 ' (digit soup)": ({"v": "4 " * 500_000}, None),
        "1 MB of a@": ({"v": "a@" * 500_000}, None),
        "1 MB of SSN-like runs": ({"v": "123-45-6789-" * 87_000}, None),
        "1 MB of e-mail addresses": ({"v": "ab@cd.ef " * 116_000}, None),
        "1 MB of card numbers": ({"v": "4111111111111111 " * 61_000}, None),
        "1 MB of fullwidth letters": ({"v": "\uff50\uff41\uff53\uff53" * 250_000}, None),
        "1 MB of digits and zero-width spaces": ({"v": "4\u200b" * 500_000}, None),
        "60,000 keys": ({f"k{i}": "x" for i in range(60_000)}, None),
        "nested list under a secret key": ({"password": [[["x"] * 10] * 100] * 100}, None),
        "message type of pwd=": ({"m": 1}, "pwd=" * 64),
    }


def main() -> None:
    scanner = DlpScanner.from_config(DlpConfig(), budget=DLP_BUDGET, clock=time.thread_time)
    custom = msgspec.convert(
        {"rules": [{"id": "as", "type": "as", "pattern": "^(a+)+$", "action": "block"}]},
        DlpConfig,
    )
    backtracker = DlpScanner.from_config(custom, budget=DLP_BUDGET, clock=time.thread_time)
    cases = [(name, scanner, data, kind) for name, (data, kind) in payloads().items()]
    cases.append(("custom ^(a+)+$ on 27 a's and !", backtracker, {"v": "a" * 27 + "!"}, None))
    print(f"budget: {DLP_BUDGET * 1000:.0f} ms of thread CPU time")
    for name, chosen, data, kind in cases:
        start = time.thread_time()
        result = chosen.scan(data, message_type=kind)
        spent = time.thread_time() - start
        rules = sorted({v.rule_id for v in result.violations})
        print(f"{name:40} {spent * 1000:8.1f} ms  {result.decision:12} {','.join(rules)}")


if __name__ == "__main__":
    main()
