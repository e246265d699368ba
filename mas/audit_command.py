"""``mas audit tail | verify | export``: the audit trail from the command line.

The trail read is the JSONL file: the FILE argument, else ``gateway.audit.file_path``
of the config. The file is an exact copy of the store's hash chain (see
``mas.server.audit_log``), keyed with the HMAC key named by
``gateway.audit.hmac_key_env`` when one is configured.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .audit.chain import key_from_env
from .audit.cli import export_file, tail_file, verify_file
from .audit.export import parse_time
from .audit.record import DECISIONS
from .config import load_config
from .errors import ConfigError


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    options: argparse.ArgumentParser,
) -> None:
    """Add ``audit`` and its subcommands to the main parser (``options``: shared options)."""
    audit = commands.add_parser("audit", help="read and verify the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False, parents=[options])
    common.add_argument("file", nargs="?", help="audit JSONL file (default: from mas.yaml)")
    common.add_argument("--config", help="mas.yaml to read the file path and HMAC key from")
    verify = actions.add_parser(
        "verify", parents=[common], help="check the hash chain; name the first broken record"
    )
    verify.set_defaults(audit_action=_verify)
    tail = actions.add_parser("tail", parents=[common], help="print records, optionally follow")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--decision",
        type=_decision,
        metavar="DECISION",
        help=f"only this decision ({', '.join(DECISIONS)})",
    )
    tail.add_argument("--agent", help="only records this agent sent or received")
    tail.add_argument("-n", "--last", type=int, help="start with the last N records")
    tail.set_defaults(audit_action=_tail)
    export = actions.add_parser("export", parents=[common], help="export records as CSV or JSON")
    export.add_argument("--format", choices=["csv", "json"], default="json")
    export.add_argument("--since", type=parse_time, help="epoch seconds or ISO 8601 (inclusive)")
    export.add_argument("--until", type=parse_time, help="epoch seconds or ISO 8601 (exclusive)")
    export.set_defaults(audit_action=_export)


def _decision(text: str) -> str:
    """A decision name (any case), or an argparse error listing the valid ones."""
    if text.upper() in DECISIONS:
        return text.upper()
    raise argparse.ArgumentTypeError(
        f"unknown decision {text!r}; choose from {', '.join(DECISIONS)}"
    )


def _resolve(args: argparse.Namespace) -> tuple[Path, bytes | None]:
    """The file to read and the chain's key."""
    key_env = None
    file = Path(args.file) if args.file else None
    if file is None or args.config:
        loaded = load_config(args.config) if (args.config or file is None) else None
        if loaded is not None:
            audit = loaded.config.gateway.audit
            key_env = audit.hmac_key_env
            if file is None:
                if audit.file_path is None:
                    raise ConfigError(
                        f"{loaded.path} sets no gateway.audit.file_path: name the audit file "
                        "as an argument, or configure the file sink"
                    )
                file = Path(audit.file_path)
    assert file is not None
    return file, key_from_env(key_env, os.environ)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``audit`` action; returns the exit status."""
    status: int = args.audit_action(args)
    return status


def _report(status: int, message: str, *, stream_ok: bool = False) -> int:
    if message:
        print(message, file=sys.stdout if (status == 0 and stream_ok) else sys.stderr)
    return status


def _verify(args: argparse.Namespace) -> int:
    file, key = _resolve(args)
    status, message = verify_file(file, key)
    return _report(status, message, stream_ok=True)


def _tail(args: argparse.Namespace) -> int:
    file, _ = _resolve(args)
    status, message = tail_file(
        file,
        follow=args.follow,
        as_json=args.json,
        decision=args.decision,
        agent=args.agent,
        out=sys.stdout,
        last=args.last,
    )
    return _report(status, message)


def _export(args: argparse.Namespace) -> int:
    file, _ = _resolve(args)
    status, message = export_file(file, args.format, args.since, args.until, sys.stdout)
    return _report(status, message)
