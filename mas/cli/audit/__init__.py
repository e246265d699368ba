"""``mas audit tail | verify | export``: the audit trail from the command line.

``files`` reads the JSONL files, ``store`` the chain in the store; each action
returns a verdict ``(exit status, message)`` that ``mas.cli.exits.verdict`` prints.

The trail read is the JSONL file: the FILE argument, else ``gateway.audit.file_path``
of the config; with ``--store``, or when the config sets no file, it is the
authoritative chain in the store the config names (the SQLite file, opened
read-only so that it can be read while the server runs, or Redis). The file is
an exact copy of the store's hash chain (see ``mas.server.audit_log``).

The chain's key is found as the server finds it (``mas.audit.keys``): the
variable ``gateway.audit.hmac_key_env`` names, else the key file next to the
store; never created here. For a FILE without ``--config``, the mas.yaml is
looked for above the FILE, then above the working directory. Without a config
(none found), or without a key file, the trail is verified unkeyed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from ...audit.store_trail import RedisTrail, SqliteTrail, StoreTrail, TrailError
from ...config import LoadedConfig, find_config_file, load_config, redact_url
from ...errors import ConfigError
from ...runtime import audit_key, redis_url, sqlite_path
from ..exits import verdict
from .files import export_file, tail_file, verify_file
from .store import export_store, tail_store, verify_store


class _Source(msgspec.Struct, frozen=True):
    """What to read: the JSONL file, or the store's chain; and the chain's key."""

    file: Path | None
    loaded: LoadedConfig | None
    key: bytes | None


def _load(args: argparse.Namespace) -> LoadedConfig | None:
    """The config: ``--config``; else for a FILE the mas.yaml above it or above the
    working directory, if there is one; else the one found from the working directory."""
    if args.config or not args.file:
        return load_config(args.config)
    for start in (Path(args.file).absolute().parent, None):
        try:
            found = find_config_file(None, cwd=start)
        except ConfigError:
            continue
        return load_config(found)
    return None  # a FILE and no mas.yaml anywhere: verified without a key


def _resolve(args: argparse.Namespace) -> _Source:
    """The trail to read and the chain's key (see the module docstring)."""
    loaded = _load(args)
    key = None if loaded is None else audit_key(loaded.config, loaded.base_dir, create=False)
    if args.store:
        if args.file:
            raise ConfigError("name an audit FILE or pass --store, not both")
        return _Source(None, loaded, key)
    if args.file:
        return _Source(Path(args.file), loaded, key)
    assert loaded is not None
    path = loaded.config.gateway.audit.file_path
    return _Source(None if path is None else Path(path), loaded, key)


def _trail(loaded: LoadedConfig | None) -> StoreTrail:
    """The store's chain, read-only."""
    if loaded is None:
        raise ConfigError("--store needs the mas.yaml that names the store: pass --config")
    config = loaded.config
    if config.store.backend == "memory":
        raise ConfigError(
            "the memory store keeps its audit chain only inside its server process; set"
            " gateway.audit.file_path to keep a copy, or use the sqlite or redis store"
        )
    try:
        if config.store.backend == "sqlite":
            return SqliteTrail(sqlite_path(config, loaded.base_dir))
        url = redis_url(config)
        return RedisTrail(url, "mas", redact_url(url))
    except TrailError as exc:
        raise ConfigError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``audit`` action; returns the exit status."""
    action = {"verify": _verify, "tail": _tail, "export": _export}[args.audit_command]
    return action(args)


def _verify(args: argparse.Namespace) -> int:
    source = _resolve(args)
    if source.file is not None:
        status, message = verify_file(source.file, source.key)
    else:
        trail = _trail(source.loaded)
        try:
            status, message = verify_store(trail, source.key)
        finally:
            trail.close()
    return verdict(status, message, result=True)


def _tail(args: argparse.Namespace) -> int:
    source = _resolve(args)
    options = {
        "follow": args.follow,
        "as_json": args.json,
        "decision": args.decision,
        "agent": args.agent,
        "out": sys.stdout,
        "last": args.last,
    }
    if source.file is not None:
        status, message = tail_file(source.file, **options)
    else:
        trail = _trail(source.loaded)
        try:
            status, message = tail_store(trail, **options)
        finally:
            trail.close()
    return verdict(status, message)


def _export(args: argparse.Namespace) -> int:
    source = _resolve(args)
    if source.file is not None:
        status, message = export_file(source.file, args.format, args.since, args.until, sys.stdout)
    else:
        trail = _trail(source.loaded)
        try:
            status, message = export_store(trail, args.format, args.since, args.until, sys.stdout)
        finally:
            trail.close()
    return verdict(status, message)
