"""The ``mas`` argument parser: every command, its arguments, and the module that runs it.

Commands (``mas COMMAND --help`` for each)::

    mas run   [CONFIG]   server and the agents listed in mas.yaml, in one process
    mas serve [CONFIG]   the server alone; allowlisted agents connect from elsewhere
    mas agent ID [CONFIG] [--server HOST:PORT]
                         the instances of one agent, in their own process
    mas reload [CONFIG]  make the running server re-read mas.yaml (its control socket)
    mas status [CONFIG] [--json]
                         the running server: agents, queues, decisions, breakers
    mas top [CONFIG]     the same, live, every second (r/d sort, q quits)
    mas certs [CONFIG]   write a development PKI to the paths mas.yaml names
    mas audit verify|tail|export [FILE]
                         check, read or export the audit trail
    mas dlq list|replay  dead-lettered messages (sqlite and redis stores)
    mas check [CONFIG]   everything `run` would refuse (mas.runtime.preflight), no start
    mas init [DIR]       scaffold a project: agents.py, mas.yaml, test_agents.py

Each command is ``set_defaults(handler=module.run)``: ``mas.cli.main`` parses,
then calls ``args.handler(args)``, a function of one namespace returning the exit
status. A new command is a module with that ``run`` and its lines here.
"""

from __future__ import annotations

import argparse

from .._version import __version__
from ..audit.export import parse_time
from ..audit.record import DECISIONS
from . import agent, audit, certs, check, dlq, init, reload, run, status, top

_CONFIG_HELP = (
    "mas.yaml, or a directory holding one (default: $MAS_RUNNER_CONFIG_FILE, else search upward)"
)
_LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR (default INFO)"


def parser() -> argparse.ArgumentParser:
    """The parser of ``mas [--log-level L] COMMAND ...``."""
    top_level = argparse.ArgumentParser(
        prog="mas", description="mas: a secure runtime for multi-agent systems"
    )
    top_level.add_argument("--version", action="version", version=f"mas {__version__}")
    top_level.add_argument("--log-level", default="INFO", help=_LOG_LEVEL_HELP)
    # Accepted after the subcommand too (`mas run --log-level debug`); SUPPRESS keeps a
    # subcommand that was not given one from resetting the top-level choice.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=_LOG_LEVEL_HELP)
    commands = top_level.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "run the server and the agents of mas.yaml"),
        ("serve", "run the server only"),
    ):
        sub = commands.add_parser(name, help=help_text, parents=[common])
        sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
        sub.set_defaults(handler=run.run)
    sub = commands.add_parser(
        "check", help="validate mas.yaml, its certificates and agent classes", parents=[common]
    )
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.set_defaults(handler=check.run)
    sub = commands.add_parser(
        "agent", help="run the instances of one agent in this process", parents=[common]
    )
    sub.add_argument("agent_id", help="the agent's id in mas.yaml")
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.add_argument(
        "--server", metavar="HOST:PORT", help="server address (default: from mas.yaml)"
    )
    sub.set_defaults(handler=agent.run)
    sub = commands.add_parser(
        "reload", help="make a running server re-read mas.yaml", parents=[common]
    )
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.set_defaults(handler=reload.run)
    sub = commands.add_parser(
        "status", help="the running server: agents, queues, decisions", parents=[common]
    )
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    sub.set_defaults(handler=status.run)
    sub = commands.add_parser(
        "top", help="the running server, live (r/d: sort by rate/depth, q: quit)", parents=[common]
    )
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.set_defaults(handler=top.run)
    _audit(commands, common)
    _dlq(commands, common)
    sub = commands.add_parser(
        "certs", help="write a development PKI to the paths in mas.yaml", parents=[common]
    )
    sub.add_argument("config", nargs="?", help=_CONFIG_HELP)
    sub.add_argument("--force", action="store_true", help="overwrite existing files")
    sub.set_defaults(handler=certs.run)
    sub = commands.add_parser(
        "init", help="scaffold a project: agents, mas.yaml and a test", parents=[common]
    )
    sub.add_argument("directory", nargs="?", default=".", help="where (default: here)")
    sub.set_defaults(handler=init.run)
    return top_level


def _audit(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], options: argparse.ArgumentParser
) -> None:
    """``audit`` and its actions (``options``: the shared options)."""
    sub = commands.add_parser("audit", help="read and verify the audit trail")
    sub.set_defaults(handler=audit.run)
    actions = sub.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False, parents=[options])
    common.add_argument("file", nargs="?", help="audit JSONL file (default: from mas.yaml)")
    common.add_argument("--config", help="mas.yaml to read the file path, store and key from")
    common.add_argument(
        "--store",
        action="store_true",
        help="read the chain in the store (SQLite file or Redis) instead of the JSONL file",
    )
    actions.add_parser(
        "verify", parents=[common], help="check the hash chain; name the first broken record"
    )
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
    export = actions.add_parser("export", parents=[common], help="export records as CSV or JSON")
    export.add_argument("--format", choices=["csv", "json"], default="json")
    export.add_argument("--since", type=parse_time, help="epoch seconds or ISO 8601 (inclusive)")
    export.add_argument("--until", type=parse_time, help="epoch seconds or ISO 8601 (exclusive)")


def _decision(text: str) -> str:
    """A decision name (any case), or an argparse error listing the valid ones."""
    if text.upper() in DECISIONS:
        return text.upper()
    raise argparse.ArgumentTypeError(
        f"unknown decision {text!r}; choose from {', '.join(DECISIONS)}"
    )


def _dlq(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], options: argparse.ArgumentParser
) -> None:
    """``dlq`` and its actions (``options``: the shared options)."""
    sub = commands.add_parser("dlq", help="list or replay dead-lettered messages")
    sub.set_defaults(handler=dlq.run)
    actions = sub.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="show dead letters with reason and attempts", parents=[options]
    )
    listing.add_argument("config", nargs="?", help="mas.yaml (default: search upward)")
    listing.add_argument("--agent", help="only messages to this agent")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = actions.add_parser(
        "replay", help="put dead letters back in their queues", parents=[options]
    )
    replay.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--config", help="mas.yaml (default: search upward)")
