"""``python -m mas``: the command line.

Commands::

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
    mas check [CONFIG]   everything `run` would refuse (mas.preflight), without starting
    mas init [DIR]       scaffold a project: agents.py, mas.yaml, test_agents.py

Exit status: 0 on success (including a graceful stop on SIGINT/SIGTERM, and a
reader that closed our stdout early, as ``| head`` does), 1 when an agent
crash-looped or the runtime failed, or when no server is running for the config
(``status``, ``top``, ``reload``: "no server is running for ...: start it with ..."),
2 for an invalid configuration,
certificate, listen address or agent class: a one-paragraph message on stderr
naming the file, key or address, never a traceback; 130 for Ctrl-C outside a
graceful stop, or a second stop signal that cut one short (one line,
``mas: interrupted``). A signal that comes once everything has stopped changes
nothing (``ignore_late_signals``).
``--log-level`` goes before or after the command; ``--version`` prints the version.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__, audit_command, dlq_command, scaffold, status, top
from .agent_process import AgentProcess
from .config import LoadedConfig, load_config
from .control import socket_path
from .control.client import ControlClient
from .control.protocol import ReloadReply, ReloadRequest
from .errors import CertificateError, ConfigError, MasError, leaves
from .logs import configure_logging
from .pki import write_dev_pki
from .preflight import preflight
from .runtime import Runtime

log = logging.getLogger("mas.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mas", description="mas: a secure runtime for multi-agent systems"
    )
    parser.add_argument("--version", action="version", version=f"mas {__version__}")
    log_level_help = "DEBUG, INFO, WARNING or ERROR (default INFO)"
    parser.add_argument("--log-level", default="INFO", help=log_level_help)
    # Accepted after the subcommand too (`mas run --log-level debug`); SUPPRESS keeps a
    # subcommand that was not given one from resetting the top-level choice.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=log_level_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = (
        "mas.yaml, or a directory holding one "
        "(default: $MAS_RUNNER_CONFIG_FILE, else search upward)"
    )
    for name, help_text in (
        ("run", "run the server and the agents of mas.yaml"),
        ("serve", "run the server only"),
        ("check", "validate mas.yaml, its certificates and agent classes"),
    ):
        sub = commands.add_parser(name, help=help_text, parents=[common])
        sub.add_argument("config", nargs="?", help=config_help)
    agent = commands.add_parser(
        "agent", help="run the instances of one agent in this process", parents=[common]
    )
    agent.add_argument("agent_id", help="the agent's id in mas.yaml")
    agent.add_argument("config", nargs="?", help=config_help)
    agent.add_argument(
        "--server", metavar="HOST:PORT", help="server address (default: from mas.yaml)"
    )
    reload = commands.add_parser(
        "reload", help="make a running server re-read mas.yaml", parents=[common]
    )
    reload.add_argument("config", nargs="?", help=config_help)
    status = commands.add_parser(
        "status", help="the running server: agents, queues, decisions", parents=[common]
    )
    status.add_argument("config", nargs="?", help=config_help)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    top = commands.add_parser(
        "top", help="the running server, live (r/d: sort by rate/depth, q: quit)", parents=[common]
    )
    top.add_argument("config", nargs="?", help=config_help)
    audit_command.add_parser(commands, common)
    dlq_command.add_parser(commands, common)
    certs = commands.add_parser(
        "certs", help="write a development PKI to the paths in mas.yaml", parents=[common]
    )
    certs.add_argument("config", nargs="?", help=config_help)
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    init = commands.add_parser(
        "init", help="scaffold a project: agents, mas.yaml and a test", parents=[common]
    )
    init.add_argument("directory", nargs="?", default=".", help="where (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status.

    Error handling
        A ``MasError`` (alone or inside exception groups) is printed as one
        paragraph per error, with status 2 for configuration and certificate
        problems and 1 otherwise; Ctrl-C anywhere is one line and status 130;
        a reader that closes our stdout early (``| head``) ends the command
        quietly with status 0. Anything else is a bug and keeps its traceback.
    """
    args = _parser().parse_args(argv)
    configure_logging(str(args.log_level))
    try:
        return _dispatch(args)
    except BaseException as exc:  # noqa: BLE001 - sorted below; anything unexpected re-raised
        return _exit_status(exc)


def console() -> int:
    """The ``mas`` command and ``python -m mas``: ``main``, then ``ignore_late_signals``."""
    try:
        status = main()
    except KeyboardInterrupt:  # came between main's own handling and the line below
        status = _interrupted()
    ignore_late_signals()  # a Ctrl-C during the interpreter's shutdown must not kill it
    return status


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "audit":
        return audit_command.run(args)
    if args.command == "dlq":
        return dlq_command.run(args)
    if args.command == "init":
        return scaffold.run(Path(args.directory))
    loaded = load_config(args.config)
    if args.command in ("run", "serve"):
        runtime = Runtime(loaded, serve_only=args.command == "serve")
        trio.run(runtime.run)
        if runtime.stopped_at_once:
            return _interrupted()
    elif args.command == "reload":
        return _reload(loaded)
    elif args.command == "status":
        return status.run(loaded, as_json=args.json)
    elif args.command == "top":
        return top.run(loaded)
    elif args.command == "agent":
        process = AgentProcess(loaded, args.agent_id, server=args.server)
        trio.run(process.run)
        if process.stopped_at_once:
            return _interrupted()
    elif args.command == "certs":
        return _certs(loaded, force=args.force)
    elif args.command == "check":
        return _check(loaded)
    return EXIT_OK


def _exit_status(exc: BaseException) -> int:
    """The exit status for an exception that ended a command, after saying what it was."""
    errors = leaves(exc)
    if any(isinstance(error, KeyboardInterrupt) for error in errors):
        return _interrupted()
    if any(isinstance(error, SystemExit) for error in errors):
        raise exc
    if all(isinstance(error, BrokenPipeError) for error in errors):
        _quiet_stdout()
        return EXIT_OK
    if not all(isinstance(error, MasError) for error in errors):
        raise exc
    seen: set[str] = set()
    for error in errors:
        text = str(error)
        if text not in seen:  # several instances failing the same way say it once
            seen.add(text)
            print(f"mas: error: {text}", file=sys.stderr)
    usage = any(isinstance(error, ConfigError | CertificateError) for error in errors)
    return EXIT_USAGE if usage else EXIT_FAILED


def _interrupted() -> int:
    """Ctrl-C (or a second stop signal) ended the command: one line, status 130."""
    print("mas: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def ignore_late_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: the command has finished.

    Python resets SIGINT to its default action while the interpreter shuts down (a
    few hundred milliseconds for a server with many modules loaded), and any thread
    may take the signal: a second Ctrl-C then would kill the process by the signal,
    with no word and no exit status of ours. The command has already stopped
    (gracefully, or not), so a signal has nothing left to stop; ignoring it (a
    disposition Python keeps through its shutdown) leaves the exit status ours.
    Called by ``console`` (the process entry point), never by ``main``, which may run
    in-process.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush finds no closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _certs(loaded: LoadedConfig, *, force: bool) -> int:
    """Write a development PKI to the TLS paths the config names."""
    config = loaded.config
    if not config.tls_configured:
        raise ConfigError(
            f"{loaded.path}: set tls_ca_path, tls_server_cert_path and tls_server_key_path "
            "(and each agent's tls_cert_path/tls_key_path) so `mas certs` knows where to write"
        )
    assert config.tls_ca_path and config.tls_server_cert_path and config.tls_server_key_path
    targets = [
        Path(config.tls_ca_path),
        Path(config.tls_server_cert_path),
        Path(config.tls_server_key_path),
    ]
    for spec in config.agents:
        if not (spec.tls_cert_path and spec.tls_key_path):
            raise ConfigError(
                f"agent {spec.agent_id!r} has no tls_cert_path/tls_key_path to write to"
            )
        targets += [Path(spec.tls_cert_path), Path(spec.tls_key_path)]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise ConfigError(
            f"refusing to overwrite existing files ({', '.join(existing)}); "
            "pass --force to replace them"
        )
    paths = write_dev_pki_to(loaded)
    print(
        f"wrote a development PKI (CA {paths}) for {len(config.agents)} agent(s); "
        "not for production"
    )
    return EXIT_OK


def write_dev_pki_to(loaded: LoadedConfig) -> str:
    """Generate the development PKI in a scratch directory and move it to the configured paths."""
    import shutil
    import tempfile

    config = loaded.config
    with tempfile.TemporaryDirectory() as tmp:
        generated = write_dev_pki(Path(tmp), config.agent_ids, trust_domain=config.trust_domain)
        assert config.tls_ca_path and config.tls_server_cert_path and config.tls_server_key_path
        moves = [
            (generated.ca_path, config.tls_ca_path),
            (generated.server_cert_path, config.tls_server_cert_path),
            (generated.server_key_path, config.tls_server_key_path),
        ]
        for spec in config.agents:
            cert, key = generated.agents[spec.agent_id]
            assert spec.tls_cert_path and spec.tls_key_path
            moves += [(cert, spec.tls_cert_path), (key, spec.tls_key_path)]
        for source, target in moves:
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            except OSError as exc:
                raise CertificateError(
                    f"cannot write {target} ({exc.strerror or exc}): its directory "
                    f"{Path(target).parent} cannot be made or written (is part of it a file?); "
                    f"fix the path in {loaded.path}"
                ) from exc
    return config.tls_ca_path


def _reload(loaded: LoadedConfig) -> int:
    """Ask the server started from this config, over its control socket, to re-read it.

    The file is validated here first (``load_config``): an invalid one is reported
    with status 2 and never sent. Operators may still send SIGHUP by hand.
    """
    with ControlClient(socket_path(loaded), config_path=loaded.path) as client:
        reply = client.request(ReloadRequest())
    assert isinstance(reply, ReloadReply)
    print(f"the server reloaded {reply.config_path}")
    if reply.needs_restart:
        print(f"these settings apply only after a restart: {', '.join(reply.needs_restart)}")
    return EXIT_OK


def _check(loaded: LoadedConfig) -> int:
    """Run the checks ``mas run`` makes before it starts, and report every problem."""
    config = loaded.config
    report = preflight(loaded, server=True, agents=config.agents)
    for warning in report.warnings:
        print(f"mas: warning: {warning}", file=sys.stderr)
    if report.errors:
        report.raise_errors()
    print(
        f"{loaded.path}: OK ({len(config.agents)} agent(s), "
        f"{len(config.permissions)} permission rule(s))"
    )
    return EXIT_OK
