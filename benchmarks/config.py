"""The mas.yaml of a benchmark run, and what the build makes of it.

``write_config`` generates the server's config: loopback, port 0, the benchmark PKI, the store
under test, and the full default pipeline for every gateway key that ``mas.yaml.example``
documents (limits that would refuse the load raised out of reach). ``check_config`` asks
``python -m mas check`` whether the build accepts it; ``store_was_used`` checks afterwards
that the server really kept its data in that store; ``pipeline_steps`` says which gateway steps
the build has and wires.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from .deploy import REPO, child_env

HUGE_RATE: Final = 1_000_000_000  # rate limits that no benchmark reaches
HUGE_QUEUE: Final = 1_000_000  # messages per queue: senders outrunning the receiver never fill it


def store_section(
    store: str, directory: Path, redis_url: str | None, sqlite_sync: str | None = None
) -> dict[str, Any]:
    """The ``store:`` section of mas.yaml for a store name."""
    if store == "sqlite":
        section = {"backend": "sqlite", "path": str(directory / "mas.sqlite3")}
        if sqlite_sync is not None:
            section["sync"] = sqlite_sync
        return section
    if store == "redis":
        return {"backend": "redis", "url": redis_url}
    return {"backend": store}


def _example() -> dict[str, Any]:
    return yaml.safe_load((REPO / "mas.yaml.example").read_text()) or {}


def limits_section() -> dict[str, Any]:
    """Limits that would refuse a benchmark's load (a full queue) raised out of reach.

    In (c) and (d) the senders can outrun the receiver, and the default queue length
    (10,000) would turn that into ``RESOURCE_EXHAUSTED queue_full`` rather than a figure.
    """
    known = _example().get("limits") or {}
    return {"max_queue_length": HUGE_QUEUE} if "max_queue_length" in known else {}


# The store keeps the newest 1,000 audit records (trimmed every second; the JSONL file keeps
# them all): scenario (h) then shows what a message leaves in Redis beyond the bounded chain.
AUDIT_RETENTION: Final = {"max_records": 1000, "interval": 1.0}
DISABLEABLE: Final = ("audit_file", "dlp", "circuit_breaker")  # steps an A/B run may switch off


def gateway_section(
    directory: Path, redis_url: str | None, disabled: Sequence[str] = ()
) -> dict[str, Any]:
    """The full default pipeline, for the gateway keys that mas.yaml.example documents.

    Rate limits far above any benchmark's rate, every feature of the default pipeline on
    (``rbac`` stays off: it is not in the default pipeline, and with no roles it would deny),
    the JSONL audit file set. ``disabled`` (names from ``DISABLEABLE``) switches steps off, to
    measure what each one costs.
    """
    known = _example().get("gateway") or {}
    gateway: dict[str, Any] = {}
    if "rate_limit" in known:
        gateway["rate_limit"] = {key: HUGE_RATE for key in known["rate_limit"]}
    if "features" in known:
        gateway["features"] = {
            key: key != "rbac" and key not in disabled
            for key, value in known["features"].items()
            if isinstance(value, bool)
        }
    if "audit" in known:
        path = None if "audit_file" in disabled else str(directory / "audit.jsonl")
        gateway["audit"] = {"file_path": path, "retention": AUDIT_RETENTION}
    if "redis" in known and redis_url:
        gateway["redis"] = {"url": redis_url}
    return gateway


def write_config(
    path: Path,
    *,
    pki_dir: Path,
    agents: Sequence[str],
    permissions: Sequence[dict[str, Any]],
    store: str,
    redis_url: str | None,
    disabled: Sequence[str] = (),
    sqlite_sync: str | None = None,
) -> Path:
    """Write a mas.yaml for ``mas serve`` on 127.0.0.1, port 0, with the bench PKI."""
    config = {
        "server_listen_addr": "127.0.0.1:0",
        "tls_ca_path": str(pki_dir / "ca.pem"),
        "tls_server_cert_path": str(pki_dir / "server.pem"),
        "tls_server_key_path": str(pki_dir / "server.key"),
        "store": store_section(store, path.parent, redis_url, sqlite_sync),
        "limits": limits_section(),
        "permissions": list(permissions),
        "agents": [{"agent_id": agent_id} for agent_id in agents],
        "gateway": gateway_section(path.parent, redis_url, disabled),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_config(path: Path) -> tuple[bool, str]:
    """Run ``python -m mas check``: (accepted, its message)."""
    done = subprocess.run(
        [sys.executable, "-m", "mas", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_env(),
        timeout=60,
        check=False,
    )
    message = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, (message[-1] if message else f"exit status {done.returncode}")


# Redis commands that the benchmark itself or a bare connection issue; any other one in
# INFO commandstats means the server really kept its data in Redis.
_ADMIN_COMMANDS: Final = (
    "info",
    "client",
    "ping",
    "hello",
    "command",
    "dbsize",
    "select",
    "config",
)


def store_was_used(store: str, directory: Path, redis_url: str | None) -> bool:
    """Whether the server really kept its data in ``store`` (not a silent fallback)."""
    if store == "sqlite":
        return any(p.stat().st_size > 0 for p in directory.glob("mas.sqlite3*"))
    if store == "redis" and redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        names = [key.removeprefix("cmdstat_").split("|")[0] for key in stats]
        return any(name not in _ADMIN_COMMANDS for name in names)
    return True


# Pipeline steps, the modules that implement them, and how the server would import them.
PIPELINE: Final = (
    ("identity", ("mas.identity",)),
    ("acl", ("mas.policy.authz",)),
    ("rate_limit", ("mas.policy.ratelimit", "mas.policy.rate_limit")),
    ("circuit_breaker", ("mas.policy.breaker", "mas.policy.circuit_breaker")),
    ("dlp", ("mas.policy.dlp",)),
    ("audit", ("mas.policy.audit", "mas.audit")),
)


def pipeline_steps() -> dict[str, str]:
    """Each gateway step: "on" when its module exists and other mas code imports it.

    A step whose module is missing is "not in this build" even though its config keys are set;
    one that exists but nothing imports is "built, not wired".
    """
    import importlib.util

    import mas

    package = Path(mas.__file__).parent
    sources = {p: p.read_text(errors="replace") for p in package.rglob("*.py")}
    steps: dict[str, str] = {}
    for step, modules in PIPELINE:
        found = [m for m in modules if importlib.util.find_spec(m) is not None]
        if not found:
            steps[step] = "not in this build"
            continue
        leaf = found[0].rsplit(".", 1)[1]
        own = package / Path(*found[0].split(".")[1:])
        pattern = re.compile(rf"^\s*(from|import)\s[^\n]*\b{leaf}\b", re.MULTILINE)
        wired = any(
            pattern.search(text)
            for path, text in sources.items()
            if not str(path).startswith(str(own)) and path.name != "config.py"
        )
        steps[step] = "on" if wired else "built, not wired"
    return steps
