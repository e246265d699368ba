"""``python -m mas serve`` in a subprocess, measured: RSS, CPU seconds and log lines.

The hostile-client tests attack a real server process (as a user deploys it), so that
what they measure is the server alone: its resident memory from ``/proc``, the CPU
time it spent, and the lines it logged. ``MAS_HOSTILE_SERVER_PATH`` names another
source tree of ``mas`` to run instead (used to measure the code before a change).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from mas.testing import TestPKI

_START_TIMEOUT = 30.0  # seconds for the server to report its port
_STOP_TIMEOUT = 15.0
_TICKS = os.sysconf("SC_CLK_TCK")
# Limits the code before the hostile-client work did not know (left out when measuring it).
_UNLIMITED = {"per_minute": 10**9, "per_hour": 10**9}
_NEW_LIMITS = frozenset(
    {
        "idle_timeout",
        "max_connections_per_identity",
        "max_connections_per_address",
        "max_streams_per_second",
        "max_pings_per_second",
        "max_settings_per_second",
        "max_output_bytes",
        "max_buffered_bytes",
        "unfinished_message_timeout",
        "max_header_bytes",
        "max_headers",
        "control_rpcs_per_minute",
        "refusal_audit_interval",
    }
)


class Usage(NamedTuple):
    """What the server process has used so far."""

    rss_kib: int
    cpu_seconds: float
    log_lines: int


class ServerProcess:
    """A running ``mas serve``; ``port`` is bound, ``usage()`` reads /proc."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.process = process
        self.log_path = log_path
        self.port = port

    def usage(self) -> Usage:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        return Usage(rss, cpu, len(self.log()))

    def log(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def alive(self) -> bool:
        return self.process.poll() is None


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML


@contextmanager
def serve(
    directory: Path,
    pki: TestPKI,
    agents: Sequence[str],
    fast_agents: Sequence[str] = (),
    *,
    limits: Mapping[str, Any] | None = None,
    permissions: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Iterator[ServerProcess]:
    """Write a PKI and mas.yaml into ``directory``, run ``mas serve`` on it, stop it after.

    Every agent in ``agents`` is allowlisted and has certificate files; ``pki``'s
    client contexts connect as them. ``fast_agents`` get rate limits too high to matter.
    """
    pki.write(directory / "certs", agents)
    config: dict[str, Any] = {
        "server_listen_addr": "127.0.0.1:0",
        "tls_ca_path": "certs/ca.pem",
        "tls_server_cert_path": "certs/server.pem",
        "tls_server_key_path": "certs/server.key",
        "store": {"backend": "memory"},
        "agents": [
            {"agent_id": a, **({"rate_limit": _UNLIMITED} if a in fast_agents else {})}
            for a in agents
        ],
        "permissions": list(permissions),
    }
    other = os.environ.get("MAS_HOSTILE_SERVER_PATH")
    if limits:
        config["limits"] = {k: v for k, v in limits.items() if not (other and k in _NEW_LIMITS)}
    config.update(extra or {})
    (directory / "mas.yaml").write_text(
        "\n".join(f"{key}: {_yaml_value(value)}" for key, value in config.items()) + "\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    if other:
        env["PYTHONPATH"] = other + os.pathsep + env.get("PYTHONPATH", "")
    log_path = directory / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mas", "serve", str(directory)],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_for_port(process, log_path)
        yield ServerProcess(process, log_path, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if "listening on" in line:
                return int(line.rsplit(":", 1)[1].split()[0])
        if process.poll() is not None:
            raise AssertionError(f"mas serve exited: {log_path.read_text()}")
        time.sleep(0.05)  # a subprocess starting: nothing to wait on but its log
    raise AssertionError(f"mas serve did not report its port: {log_path.read_text()}")
