"""``mas check`` refuses what ``mas run`` would refuse, with the same message.

Each bad configuration is checked twice, as a user would: ``mas check`` must
exit 2 with one error line, and ``mas run`` must refuse it with that same line.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mas.identity import spiffe_uri
from mas.pki import CertificateAuthority, write_ca, write_key_pair

ROOT = Path(__file__).resolve().parents[2]

TLS = (
    "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
    "tls_server_key_path: certs/server.key\n"
)
AGENTS_MODULE = (
    "from mas import Agent\n\n\n"
    "class Idle(Agent):\n    pass\n\n\n"
    "class Greeter(Agent):\n"
    "    def __init__(self, agent_id, *, greeting='hi', **kwargs):\n"
    "        super().__init__(agent_id, **kwargs)\n"
    "        self.greeting = greeting\n\n\n"
    "class Worker(Agent):\n"
    "    def __init__(self, agent_id, *, queue_name, **kwargs):\n"
    "        super().__init__(agent_id, **kwargs)\n"
    "        self.queue_name = queue_name\n"
)


def mas(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("mas: error:")]


def check_and_run_refuse(
    directory: Path, *fragments: str, env: dict[str, str] | None = None
) -> str:
    """``check`` and ``run`` both exit 2 with the same single error naming ``fragments``."""
    checked = mas("check", str(directory), cwd=directory, env=env)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "OK" not in checked.stdout
    lines = error_lines(checked)
    assert len(lines) == 1, checked.stderr
    for fragment in fragments:
        assert fragment in lines[0], checked.stderr
    ran = mas("run", str(directory), cwd=directory, env=env)
    assert ran.returncode == 2, ran.stderr
    assert error_lines(ran) == lines
    return lines[0]


def project(directory: Path, agents: str, *, tls: bool = True, extra: str = "") -> Path:
    """A mas.yaml with ``agents`` (YAML list items) and, with ``tls``, a fresh PKI."""
    (directory / "agents.py").write_text(AGENTS_MODULE)
    (directory / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\n"
        + (TLS if tls else "")
        + extra
        + "agents:\n"
        + agents
    )
    if tls:
        made = mas("certs", str(directory), cwd=directory)
        assert made.returncode == 0, made.stderr
    return directory


AGENT_A = (
    "  - {agent_id: a, class_path: 'agents:Idle', "
    "tls_cert_path: certs/a.pem, tls_key_path: certs/a.key}\n"
)
AGENT_B = (
    "  - {agent_id: b, class_path: 'agents:Idle', "
    "tls_cert_path: certs/b.pem, tls_key_path: certs/b.key}\n"
)


def test_a_good_project_is_ok(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A + AGENT_B)
    checked = mas("check", str(tmp_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "OK (2 agent(s)" in checked.stdout
    assert checked.stderr == ""


def test_missing_server_key(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A)
    (tmp_path / "certs" / "server.key").unlink()
    check_and_run_refuse(tmp_path, str(tmp_path / "certs" / "server.key"), "does not exist")


def test_unreadable_agent_key(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A)
    (tmp_path / "certs" / "a.key").unlink()
    (tmp_path / "certs" / "a.key").mkdir()  # unreadable as a file, even for root
    check_and_run_refuse(tmp_path, str(tmp_path / "certs" / "a.key"), "is a directory")


def test_agent_key_not_matching_its_certificate(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A + AGENT_B)
    shutil.copy(tmp_path / "certs" / "b.key", tmp_path / "certs" / "a.key")
    check_and_run_refuse(tmp_path, "a.key", "does not match", "a.pem")


def test_agent_certificate_of_another_agent(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A + AGENT_B)
    for suffix in ("pem", "key"):
        shutil.copy(tmp_path / "certs" / f"b.{suffix}", tmp_path / "certs" / f"a.{suffix}")
    check_and_run_refuse(tmp_path, "a.pem", "'a'", "spiffe://mas/agent/b", "spiffe://mas/agent/a")


def test_certificate_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate()
    certs = tmp_path / "certs"
    write_ca(ca, certs / "ca.pem")
    write_key_pair(ca.issue_server(), certs / "server.pem", certs / "server.key")
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "a")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_uri("a"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (certs / "a.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "a.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    project(tmp_path, AGENT_A, tls=False, extra=TLS)
    checked = mas("check", str(tmp_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "mas: warning:" in checked.stderr
    assert "a.pem expires in" in checked.stderr


def test_public_listen_address_without_tls_files(tmp_path: Path) -> None:
    project(tmp_path, "  - {agent_id: a, class_path: 'agents:Idle'}\n", tls=False)
    text = (tmp_path / "mas.yaml").read_text().replace("127.0.0.1:0", "0.0.0.0:0")
    (tmp_path / "mas.yaml").write_text(text)
    check_and_run_refuse(tmp_path, "0.0.0.0:0", "loopback", "tls_ca_path")


def test_init_kwargs_the_constructor_does_not_take(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - agent_id: g\n    class_path: 'agents:Greeter'\n"
        "    init_kwargs: {greeting: hello, greting: typo}\n",
        tls=False,
    )
    check_and_run_refuse(tmp_path, "$.agents[0].init_kwargs", "'greting'", "agents:Greeter")


def test_init_kwargs_missing_a_required_keyword(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - agent_id: w\n    class_path: 'agents:Worker'\n    init_kwargs: {}\n",
        tls=False,
    )
    check_and_run_refuse(tmp_path, "$.agents[0].init_kwargs", "'queue_name'", "agents:Worker")


def test_init_kwargs_the_constructor_takes_are_ok(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - agent_id: g\n    class_path: 'agents:Greeter'\n"
        "    init_kwargs: {greeting: hello, max_concurrency: 4, handler_timeout: 5}\n",
        tls=False,
    )
    checked = mas("check", str(tmp_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_telemetry_without_the_otel_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "no_otel"
    (blocker / "opentelemetry").mkdir(parents=True)
    (blocker / "opentelemetry" / "__init__.py").write_text(
        "raise ImportError('opentelemetry is not installed (simulated)')\n"
    )
    project(
        tmp_path,
        "  - {agent_id: a, class_path: 'agents:Idle'}\n",
        tls=False,
        extra="gateway: {telemetry: {enabled: true}}\n",
    )
    check_and_run_refuse(
        tmp_path, "gateway.telemetry.enabled", "mas[otel]", env={"PYTHONPATH": str(blocker)}
    )


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "agents: []\n"])
def test_a_config_without_agents(tmp_path: Path, text: str) -> None:
    (tmp_path / "mas.yaml").write_text(text)
    check_and_run_refuse(tmp_path, str(tmp_path / "mas.yaml"), "lists no agents")


def test_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    project(tmp_path, AGENT_A + AGENT_B)
    (tmp_path / "certs" / "a.pem").unlink()
    (tmp_path / "certs" / "b.key").write_text("garbage\n")
    checked = mas("check", str(tmp_path), cwd=tmp_path)
    assert checked.returncode == 2
    lines = error_lines(checked)
    assert len(lines) == 2, checked.stderr
    assert "a.pem" in lines[0]
    assert "b.key" in lines[1]
