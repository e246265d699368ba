"""``python -m mas``: the command line.

Commands::

    mas run   [CONFIG]   server and the agents listed in mas.yaml, in one process
    mas serve [CONFIG]   the server alone; allowlisted agents connect from elsewhere
    mas agent ID [CONFIG] [--server HOST:PORT]
                         the instances of one agent, in their own process
    mas reload [CONFIG]  make the running server re-read mas.yaml (SIGHUP)
    mas certs [CONFIG]   write a development PKI to the paths mas.yaml names
    mas audit verify|tail|export [FILE]
                         check, read or export the audit trail
    mas dlq list|replay  dead-lettered messages (sqlite and redis stores)
    mas check [CONFIG]   validate mas.yaml, its certificates and its agent classes

Exit status: 0 on success (including a graceful stop on SIGINT/SIGTERM), 1 when
an agent crash-looped or the runtime failed, 2 for an invalid configuration,
certificate or agent class: a one-paragraph message on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import audit_command, dlq_command
from .agent_process import AgentProcess
from .config import LoadedConfig, load_config
from .errors import CertificateError, ConfigError, MasError
from .hosting import load_agent_class
from .pki import server_ssl_context, write_dev_pki
from .runtime import Runtime, pid_file_for

log = logging.getLogger("mas.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mas", description="mas: a secure runtime for multi-agent systems"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
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
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", nargs="?", help=config_help)
    agent = commands.add_parser("agent", help="run the instances of one agent in this process")
    agent.add_argument("agent_id", help="the agent's id in mas.yaml")
    agent.add_argument("config", nargs="?", help=config_help)
    agent.add_argument(
        "--server", metavar="HOST:PORT", help="server address (default: from mas.yaml)"
    )
    reload = commands.add_parser("reload", help="make a running server re-read mas.yaml")
    reload.add_argument("config", nargs="?", help=config_help)
    reload.add_argument("--pid", type=int, help="the server's process id (default: mas.yaml.pid)")
    audit_command.add_parser(commands)
    dlq_command.add_parser(commands)
    certs = commands.add_parser("certs", help="write a development PKI to the paths in mas.yaml")
    certs.add_argument("config", nargs="?", help=config_help)
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        if args.command == "audit":
            return audit_command.run(args)
        if args.command == "dlq":
            return dlq_command.run(args)
        loaded = load_config(args.config)
        if args.command in ("run", "serve"):
            trio.run(Runtime(loaded, serve_only=args.command == "serve").run)
        elif args.command == "reload":
            return _reload(loaded, args.pid)
        elif args.command == "agent":
            trio.run(AgentProcess(loaded, args.agent_id, server=args.server).run)
        elif args.command == "certs":
            return _certs(loaded, force=args.force)
        elif args.command == "check":
            return _check(loaded)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        errors = list(_leaves(exc))
        if not all(isinstance(error, MasError) for error in errors):
            raise
        for error in errors:
            print(f"mas: error: {error}", file=sys.stderr)
        usage = any(isinstance(error, ConfigError | CertificateError) for error in errors)
        return EXIT_USAGE if usage else EXIT_FAILED
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


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
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return config.tls_ca_path


def _reload(loaded: LoadedConfig, pid: int | None) -> int:
    """Send SIGHUP to the server started from this config (policy, allowlist, revocations)."""
    if pid is None:
        pid_path = pid_file_for(loaded.path)
        try:
            pid = int(pid_path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"no running server found for {loaded.path} ({pid_path}: {exc}); "
                "start it with `mas serve` or `mas run`, or pass --pid"
            ) from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise ConfigError(f"no process {pid}: the server is not running (stale pid file?)") from exc
    except PermissionError as exc:
        raise ConfigError(f"not allowed to signal process {pid}: {exc}") from exc
    print(f"asked server {pid} to reload {loaded.path}")
    return EXIT_OK


def _check(loaded: LoadedConfig) -> int:
    """Validate the config's certificates and agent classes (the config itself already loaded)."""
    config = loaded.config
    if config.tls_configured:
        assert config.tls_ca_path and config.tls_server_cert_path and config.tls_server_key_path
        server_ssl_context(
            config.tls_ca_path, config.tls_server_cert_path, config.tls_server_key_path
        )
    for index, spec in enumerate(config.agents):
        if spec.class_path:
            load_agent_class(spec, loaded.base_dir, index)
    print(
        f"{loaded.path}: OK ({len(config.agents)} agent(s), "
        f"{len(config.permissions)} permission rule(s))"
    )
    return EXIT_OK
