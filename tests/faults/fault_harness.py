"""What the fault tests share: projects, agent processes, the tally of accepted and delivered.

Accounting (the lines are printed by ``fault_agents``):

* accepted  - message ids the server answered a send with;
* delivered - accepted ids some handler ran to completion at least once;
* duplicates - deliveries of accepted ids beyond the first (at-least-once allows them);
* lost      - accepted ids never delivered: must be none;
* unconfirmed - ids delivered although their sender never saw them accepted (the
  server accepted a send whose answer was lost with the connection; the sender
  sent it again under a new id): allowed, reported.

``report`` prints one line per test and appends it, as JSON, to the file named
by ``MAS_FAULTS_REPORT`` when that is set (the figures of the fault tests'
closing note come from there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from processes import ServerProcess, agent_env, make_certs, mas_process, read, wait_for

HERE = Path(__file__).resolve().parent
AGENTS = "fault_agents"
PER_ROUND = 150  # sends accepted between two kills of a kill loop
DRAIN_TIMEOUT = 120.0  # seconds for every accepted message to be delivered after the fault


class KnownDefect(AssertionError):
    """A check that fails on today's code for a reason an open issue names.

    Tests mark it ``xfail(strict=True, raises=KnownDefect, reason="issue N: ...")``:
    any other failure (a plain ``assert``: one the reason does not name) still
    fails the test, and the fix turns the xfail into a strict XPASS failure, the
    signal to drop the mark.
    """


def expect(condition: object, message: str) -> None:
    """``KnownDefect(message)`` unless ``condition``."""
    if not condition:
        raise KnownDefect(message)


def long_faults(config: pytest.Config) -> bool:
    """The long forms: ``--long-faults`` or ``MAS_LONG_FAULTS=1``."""
    return bool(config.getoption("--long-faults")) or os.environ.get("MAS_LONG_FAULTS") == "1"


@dataclass(frozen=True)
class AgentSpec:
    """One ``agents:`` entry of a fault test's mas.yaml (class from ``fault_agents``)."""

    agent_id: str
    class_name: str
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    instances: int = 1


def write_project(
    directory: Path,
    *,
    port: int,
    store: str,
    agents: list[AgentSpec],
    permissions: list[dict[str, Any]],
    certs: str = "certs",
    limits: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
) -> None:
    """mas.yaml in ``directory`` (JSON flow style is YAML); certificates under ``certs``.

    The rate limits are lifted (the tests load the server on purpose) and the
    circuit breaker is off unless ``gateway`` says otherwise: the tests count
    deliveries, and a breaker refusing sends to a nacking target is not a fault.
    """
    lines = [
        f"server_listen_addr: 127.0.0.1:{port}",
        f"tls_ca_path: {certs}/ca.pem",
        f"tls_server_cert_path: {certs}/server.pem",
        f"tls_server_key_path: {certs}/server.key",
        f"store: {store}",
        "gateway: "
        + json.dumps(
            {
                "rate_limit": {"per_minute": 10_000_000, "per_hour": 100_000_000},
                "features": {"circuit_breaker": False},
                **(gateway or {}),
            }
        ),
        f"permissions: {json.dumps(permissions)}",
        "agents:",
    ]
    if limits:
        lines.insert(5, f"limits: {json.dumps(limits)}")
    for agent in agents:
        entry = {
            "agent_id": agent.agent_id,
            "class_path": f"{AGENTS}:{agent.class_name}",
            "instances": agent.instances,
            "init_kwargs": agent.init_kwargs,
            "tls_cert_path": f"{certs}/{agent.agent_id}.pem",
            "tls_key_path": f"{certs}/{agent.agent_id}.key",
        }
        lines.append(f"  - {json.dumps(entry)}")
    (directory / "mas.yaml").write_text("\n".join(lines) + "\n")


def certify(directory: Path) -> None:
    """Write the PKI ``directory/mas.yaml`` names."""
    make_certs(directory, path=(HERE,))


def agent_command(agent_id: str, config_dir: Path, server: str | None = None) -> tuple[str, ...]:
    """The arguments of ``mas agent`` for one agent id (optionally on a given server)."""
    args = ("agent", agent_id, str(config_dir))
    return (*args, "--server", server) if server else args


def agent_process(
    agent_id: str, config_dir: Path, log: Path, server: str | None = None
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """``mas agent AGENT_ID CONFIG_DIR [--server ADDRESS]`` for a block (``fault_agents``)."""
    return mas_process(
        *agent_command(agent_id, config_dir, server), cwd=config_dir, log=log, path=(HERE,)
    )


@dataclass
class Tally:
    """Accepted sends and deliveries read from agent logs (see the module docstring)."""

    accepted: dict[str, float] = field(default_factory=dict)  # message id -> time accepted
    deliveries: Counter[str] = field(default_factory=Counter)
    delivered_at: list[float] = field(default_factory=list)
    refusals: list[tuple[float, str]] = field(default_factory=list)
    nacks: int = 0
    replies: int = 0
    late: int = 0
    failed_requests: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def read(cls, *logs: Path) -> Tally:
        tally = cls()
        for log in logs:
            for line in read(log).splitlines():
                tally._line(line)
        return tally

    def _line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        parts = rest.split(" ", 2)
        try:
            if kind == "A" and len(parts) >= 2:
                self.accepted[parts[0]] = float(parts[1])
            elif kind == "D" and len(parts) >= 2:
                self.deliveries[parts[0]] += 1
                self.delivered_at.append(float(parts[1]))
            elif kind == "R" and len(parts) >= 2:
                self.refusals.append((float(parts[0]), " ".join(parts[1:])))
            elif kind == "N" and parts:
                self.nacks += 1
            elif kind == "Q" and len(parts) >= 2:
                if parts[0] == "ok":
                    self.replies += 1
                elif parts[0] == "late":
                    self.late += 1
                else:
                    self.failed_requests.append((float(parts[1]), " ".join(parts[2:])))
        except ValueError:
            pass  # a line cut short by a killed process, or a log line of mas itself

    @property
    def lost(self) -> set[str]:
        return {m for m in self.accepted if m not in self.deliveries}

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for m, n in self.deliveries.items() if m in self.accepted)

    @property
    def unconfirmed(self) -> int:
        return sum(1 for m in self.deliveries if m not in self.accepted)

    def first_accepted_after(self, moment: float) -> float | None:
        later = [t for t in self.accepted.values() if t > moment]
        return min(later) if later else None

    def first_delivered_after(self, moment: float) -> float | None:
        later = [t for t in self.delivered_at if t > moment]
        return min(later) if later else None

    def figures(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted),
            "delivered": len(self.accepted) - len(self.lost),
            "duplicates": self.duplicates,
            "lost": len(self.lost),
            "unconfirmed": self.unconfirmed,
            "refusals": len(self.refusals),
            "nacks": self.nacks,
            "replies": self.replies,
            "late_requests": self.late,
            "failed_requests": len(self.failed_requests),
        }


def wait_accepted(logs: list[Path], at_least: int, timeout: float, what: str) -> None:
    wait_for(lambda: len(Tally.read(*logs).accepted) >= at_least, timeout, what)


def recovered_after(
    logs: list[Path], moment: float, timeout: float, what: str, *, delivered: bool = False
) -> float:
    """Seconds from ``moment`` (a ``time.time()``) to the first send accepted after it.

    ``delivered``: to the first delivery after it instead.
    """
    found: list[float] = []

    def since() -> bool:
        tally = Tally.read(*logs)
        first = (tally.first_delivered_after if delivered else tally.first_accepted_after)(moment)
        if first is not None:
            found.append(first)
        return first is not None

    wait_for(since, timeout, what)
    return found[0] - moment


def kill_loop(
    servers: list[ServerProcess],
    kills: int,
    sender_log: Path,
    recorder_log: Path,
    per_round: int = PER_ROUND,
) -> list[dict[str, float]]:
    """kill -9 ``servers`` in turn, ``kills`` times, ``per_round`` accepted sends apart.

    Each is restarted at once on its port. Returns, per kill, the seconds from the
    kill to the next accepted send and to the next delivery. Ends after
    ``per_round`` more sends were accepted after the last kill.
    """
    recoveries = []
    for kill in range(1, kills + 1):
        wait_accepted(
            [sender_log],
            len(Tally.read(sender_log).accepted) + per_round,
            120,
            f"{per_round} more sends before kill {kill}",
        )
        servers[(kill - 1) % len(servers)].kill()  # sends, deliveries and acks in flight
        killed = time.time()
        servers[(kill - 1) % len(servers)].start()
        accepted = recovered_after([sender_log], killed, 90, f"a send accepted after kill {kill}")
        delivered = recovered_after(
            [recorder_log], killed, 90, f"a delivery after kill {kill}", delivered=True
        )
        recoveries.append({"accept": round(accepted, 2), "deliver": round(delivered, 2)})
    wait_accepted(
        [sender_log],
        len(Tally.read(sender_log).accepted) + per_round,
        120,
        "sends after the last kill",
    )
    return recoveries


def drain(
    sender_logs: list[Path], recorder_logs: list[Path], timeout: float = DRAIN_TIMEOUT
) -> Tally:
    """Wait until every accepted message was delivered (or ``timeout``); the final tally."""
    deadline = time.monotonic() + timeout
    while True:
        tally = Tally.read(*sender_logs, *recorder_logs)
        if not tally.lost or time.monotonic() > deadline:
            return tally
        time.sleep(0.2)


def report(name: str, **figures: Any) -> None:
    """Print the test's figures and append them to ``$MAS_FAULTS_REPORT``."""
    line = json.dumps({"test": name, **figures}, sort_keys=False)
    print(f"FAULTS {line}")
    path = os.environ.get("MAS_FAULTS_REPORT")
    if path:
        with open(path, "a") as file:
            file.write(line + "\n")


def verify_audit(path: Path) -> None:
    """``mas audit verify`` on a JSONL audit file succeeds."""
    verify = subprocess.run(
        [sys.executable, "-m", "mas", "audit", "verify", str(path)],
        env=agent_env(HERE),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def tail(log: Path, chars: int = 3000) -> str:
    return read(log)[-chars:]
