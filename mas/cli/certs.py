"""``mas certs [CONFIG] [--force]``: write a development PKI to the paths mas.yaml names.

The CA, the server's certificate and key, and each agent's, for ``mas serve`` and
``mas agent`` in separate processes (a throwaway PKI cannot be shared). Existing
files are kept unless ``--force``. Not for production.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ..config import LoadedConfig, load_config
from ..errors import CertificateError, ConfigError
from ..pki import write_dev_pki
from .exits import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Write a development PKI to the TLS paths the config names; the exit status."""
    loaded = load_config(args.config)
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
    if existing and not args.force:
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
