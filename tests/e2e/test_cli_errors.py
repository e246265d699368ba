"""Failures a user meets from the command line: one paragraph, an exit status, no traceback.

Each test runs ``python -m mas`` as a subprocess, as a user would, and checks the
exit status (2 for configuration and certificates, 130 for Ctrl-C, 0 for a
reader that closed the pipe), that the message names the file, key or address
at fault, and that no traceback is printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TLS_CONFIG = (
    "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
    "tls_server_key_path: certs/server.key\n"
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}


def mas(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd or ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_paragraph(
    result: subprocess.CompletedProcess[str], status: int, *fragments: str
) -> str:
    """The run ended with ``status`` and exactly one error line naming every fragment."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mas: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr
    return errors[0]


def write_agents_module(directory: Path, body: str) -> None:
    (directory / "agents.py").write_text("from mas import Agent\n\n" + body)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_port_in_use_names_the_address(tmp_path: Path, busy_port: int) -> None:
    (tmp_path / "mas.yaml").write_text(
        f"server_listen_addr: 127.0.0.1:{busy_port}\nagents: [{{agent_id: a}}]\n"
    )
    assert_one_paragraph(
        mas("serve", str(tmp_path)), 2, f"127.0.0.1:{busy_port}", "server_listen_addr"
    )


def test_unresolvable_listen_address_names_it(tmp_path: Path) -> None:
    agents = "agents: [{agent_id: a, tls_cert_path: certs/a.pem, tls_key_path: certs/a.key}]\n"
    (tmp_path / "mas.yaml").write_text("server_listen_addr: 127.0.0.1:0\n" + TLS_CONFIG + agents)
    assert mas("certs", str(tmp_path)).returncode == 0
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: no-such-host.invalid:0\n" + TLS_CONFIG + agents
    )
    assert_one_paragraph(mas("serve", str(tmp_path)), 2, "no-such-host.invalid:0")


def test_certs_under_an_existing_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    (tmp_path / "mas.yaml").write_text(
        "tls_ca_path: blocker/ca.pem\ntls_server_cert_path: blocker/server.pem\n"
        "tls_server_key_path: blocker/server.key\nagents: []\n"
    )
    assert_one_paragraph(mas("certs", str(tmp_path)), 2, str(tmp_path / "blocker"))


def test_agent_constructor_that_raises_is_named_once(tmp_path: Path) -> None:
    write_agents_module(
        tmp_path,
        "class Broken(Agent):\n"
        "    def __init__(self, agent_id, **kwargs):\n"
        "        super().__init__(agent_id, **kwargs)\n"
        "        raise ValueError('no database configured')\n",
    )
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\n"
        "agents: [{agent_id: b, class_path: 'agents:Broken', instances: 3}]\n"
    )
    assert_one_paragraph(
        mas("run", str(tmp_path), cwd=tmp_path), 2, "'b'", "ValueError", "no database configured"
    )


def _certs_for_agent(tmp_path: Path) -> None:
    write_agents_module(tmp_path, "class Idle(Agent):\n    pass\n")
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\n" + TLS_CONFIG + "agents:\n"
        "  - {agent_id: a, class_path: 'agents:Idle', instances: 4,"
        " tls_cert_path: certs/a.pem, tls_key_path: certs/a.key}\n"
    )
    assert mas("certs", str(tmp_path)).returncode == 0


def test_missing_agent_certificate_is_one_message_not_a_crash_loop(tmp_path: Path) -> None:
    _certs_for_agent(tmp_path)
    (tmp_path / "certs" / "a.pem").unlink()
    line = assert_one_paragraph(
        mas("run", str(tmp_path), cwd=tmp_path), 2, str(tmp_path / "certs" / "a.pem")
    )
    assert "does not exist" in line


def test_corrupt_agent_key_is_one_message(tmp_path: Path) -> None:
    _certs_for_agent(tmp_path)
    (tmp_path / "certs" / "a.key").write_text("not a key\n")
    assert_one_paragraph(
        mas("run", str(tmp_path), cwd=tmp_path), 2, str(tmp_path / "certs" / "a.key")
    )


@pytest.fixture
def silent_redis() -> Iterator[socket.socket]:
    """A TCP listener that accepts and never answers: a start that hangs in the store."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        yield listener


def _default_sigint() -> None:
    """Ctrl-C as in a terminal, even when the suite itself ignores SIGINT.

    A command a non-interactive shell starts in the background (``.ci/run &``)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_while_waiting(args: list[str], silent_redis: socket.socket) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mas", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        connection, _ = silent_redis.accept()  # the command is now waiting on the store
        with connection:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


def _redis_config(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\n"
        f"store: {{backend: redis, url: 'redis://127.0.0.1:{port}/0'}}\n"
        "agents: [{agent_id: a}]\n"
    )


@pytest.mark.slow
def test_ctrl_c_during_startup_exits_130_in_one_line(
    tmp_path: Path, silent_redis: socket.socket
) -> None:
    _redis_config(tmp_path, silent_redis)
    status, stderr = _interrupt_while_waiting(["serve", str(tmp_path)], silent_redis)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "mas: interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("action", [["list"], ["replay", "--all", "--config"]])
def test_ctrl_c_in_dlq_list_and_replay_exits_130_in_one_line(
    tmp_path: Path, silent_redis: socket.socket, action: list[str]
) -> None:
    _redis_config(tmp_path, silent_redis)
    status, stderr = _interrupt_while_waiting(["dlq", *action, str(tmp_path)], silent_redis)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "mas: interrupted"


def test_audit_export_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    from mas.audit.chain import link_many
    from mas.audit.record import AuditDraft
    from mas.audit.sink import JsonlSink

    path = tmp_path / "audit.jsonl"
    drafts = [
        AuditDraft(time=1_700_000_000.0 + n, decision="ALLOWED", message_id=f"m{n}", sender_id="a")
        for n in range(20_000)  # far more than a pipe buffer holds
    ]
    with JsonlSink(path, 100_000_000, 2) as sink:
        sink.write(link_many(None, drafts, None))
    process = subprocess.Popen(
        [sys.executable, "-m", "mas", "audit", "export", str(path), "--format", "csv"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        assert process.stdout.readline()  # `head -1`: one line, then the pipe closes
        process.stdout.close()
        stderr = process.stderr.read().decode()
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert status == 0, stderr
    assert stderr == ""


def test_audit_tail_rejects_an_unknown_decision(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_text("")
    result = mas("audit", "tail", str(tmp_path / "audit.jsonl"), "--decision", "ALOWED")
    assert result.returncode == 2
    assert "unknown decision 'ALOWED'" in result.stderr
    assert "DLP_BLOCKED" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_log_level_after_the_subcommand(tmp_path: Path) -> None:
    import mas as package

    version = mas("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"mas {package.__version__}"
    (tmp_path / "mas.yaml").write_text("agents: [{agent_id: a}]\n")
    checked = mas("check", str(tmp_path), "--log-level", "debug")
    assert checked.returncode == 0, checked.stderr


def test_a_module_beside_mas_yaml_does_not_shadow_an_installed_one(tmp_path: Path) -> None:
    installed = tmp_path / "site"
    installed.mkdir()
    (installed / "helperlib.py").write_text("GREETING = 'installed'\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "helperlib.py").write_text("raise ImportError('the local file was imported')\n")
    write_agents_module(project, "import helperlib\n\nclass A(Agent):\n    pass\n")
    (project / "mas.yaml").write_text("agents: [{agent_id: a, class_path: 'agents:A'}]\n")
    env = {**_env(), "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-m", "mas", "check", str(project)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_an_agent_module_that_fails_to_import_is_named_by_file(tmp_path: Path) -> None:
    write_agents_module(tmp_path, "undefined_name\n")
    (tmp_path / "mas.yaml").write_text("agents: [{agent_id: a, class_path: 'agents:A'}]\n")
    assert_one_paragraph(
        mas("check", str(tmp_path)), 2, str(tmp_path / "agents.py"), "NameError", "$.agents[0]"
    )
