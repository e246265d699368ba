"""``python -m mas`` as a user runs it: real subprocesses, exit statuses, no tracebacks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ping_pong"


def _mas(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _assert_clean_error(
    result: subprocess.CompletedProcess[str], status: int, *fragments: str
) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def _answers(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    return [line.split("#")[1].split(":")[0] for line in lines if "pong answered" in line]


@pytest.mark.slow
def test_ping_pong_example_runs_to_completion_and_keeps_state(tmp_path: Path) -> None:
    example = tmp_path / "ping_pong"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("mas.sqlite3*", "__pycache__"))
    result = _mas("run", str(example))
    assert result.returncode == 0, result.stderr
    assert _answers(result) == ["1", "2", "3"]
    assert "development PKI" in result.stderr
    assert "Traceback" not in result.stderr
    # The SQLite store next to mas.yaml kept pong's state: the count goes on.
    again = _mas("run", str(example))
    assert again.returncode == 0, again.stderr
    assert _answers(again) == ["4", "5", "6"]


def test_invalid_config_exits_2_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text("agents:\n  - agent_id: a\n    instances: 0\n")
    _assert_clean_error(_mas("run", str(tmp_path)), 2, "$.agents[0].instances")


def test_a_dlp_pattern_re2_cannot_run_exits_2_saying_why(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "agents: [{agent_id: a}]\n"
        "gateway: {dlp: {rules: [{id: twice, type: t, pattern: '(a)\\1'}]}}\n"
    )
    result = _mas("check", str(tmp_path / "mas.yaml"))
    _assert_clean_error(result, 2, "linear-time engine (RE2)")
    assert "'twice'" in result.stderr


def test_unknown_key_exits_2(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text("agentz: []\n")
    _assert_clean_error(_mas("check", str(tmp_path / "mas.yaml")), 2, "agentz")


def test_missing_config_exits_2_saying_where_it_looked(tmp_path: Path) -> None:
    _assert_clean_error(_mas("run", cwd=tmp_path), 2, "mas.yaml")


def test_missing_certificate_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "tls_ca_path: ca.pem\ntls_server_cert_path: server.pem\ntls_server_key_path: server.key\n"
    )
    _assert_clean_error(_mas("serve", str(tmp_path)), 2, "ca.pem")


def test_bad_class_path_exits_2(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nagents:\n  - agent_id: a\n    class_path: nowhere:Agent\n"
    )
    _assert_clean_error(_mas("run", str(tmp_path)), 2, "nowhere", "$.agents[0].class_path")


def test_dev_pki_refused_on_a_public_listen_address(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text("server_listen_addr: 0.0.0.0:0\n")
    _assert_clean_error(_mas("serve", str(tmp_path)), 2, "loopback")


def test_certs_writes_a_pki_that_serve_accepts(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\n"
        "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
        "tls_server_key_path: certs/server.key\n"
        "agents:\n  - agent_id: a\n    tls_cert_path: certs/a.pem\n    tls_key_path: certs/a.key\n"
    )
    result = _mas("certs", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "certs" / "a.pem").exists()
    assert oct((tmp_path / "certs" / "a.key").stat().st_mode & 0o777) == "0o600"
    checked = _mas("check", str(tmp_path))
    assert checked.returncode == 0, checked.stderr
    _assert_clean_error(_mas("certs", str(tmp_path)), 2, "--force")


@pytest.mark.slow
def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nagents:\n  - agent_id: a\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mas", "serve", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "listening on" in line:
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.Popen(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_server_and_agents_in_separate_processes(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text((EXAMPLE / "agents.py").read_text())
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\n"
        "tls_ca_path: certs/ca.pem\ntls_server_cert_path: certs/server.pem\n"
        "tls_server_key_path: certs/server.key\n"
        "permissions:\n  - {type: allow_bidirectional, agents: [ping, pong]}\n"
        "agents:\n"
        "  - agent_id: pong\n    class_path: agents:PongAgent\n    capabilities: [responder]\n"
        "    tls_cert_path: certs/pong.pem\n    tls_key_path: certs/pong.key\n"
        "  - agent_id: ping\n    class_path: agents:PingAgent\n"
        "    tls_cert_path: certs/ping.pem\n    tls_key_path: certs/ping.key\n"
        "    init_kwargs: {questions: [one, two]}\n"
    )
    assert _mas("certs", str(tmp_path)).returncode == 0
    server = _start("serve", str(tmp_path), cwd=tmp_path)
    pong = None
    try:
        assert server.stderr is not None
        port = None
        for line in server.stderr:
            if "listening on" in line:
                port = line.rsplit(":", 1)[1].split()[0]
                break
        assert port, "the server did not start"
        address = f"127.0.0.1:{port}"
        pong = _start("agent", "pong", str(tmp_path), "--server", address, cwd=tmp_path)
        ping = _mas("agent", "ping", str(tmp_path), "--server", address, cwd=tmp_path)
        assert ping.returncode == 0, ping.stderr
        assert ping.stdout.count("ping: pong answered") == 2
        assert _stop(pong) == 0
        pong = None
    finally:
        if pong is not None:
            _stop(pong)
        assert _stop(server) == 0


def test_agent_command_explains_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\nagents:\n  - {agent_id: a, class_path: 'x:Y'}\n"
    )
    _assert_clean_error(_mas("agent", "b", str(tmp_path)), 2, "not listed")
    _assert_clean_error(_mas("agent", "a", str(tmp_path)), 2, "mas certs")


def test_audit_verify_and_export_from_the_command_line(tmp_path: Path) -> None:
    from mas.audit.chain import link_many
    from mas.audit.record import AuditDraft
    from mas.audit.sink import JsonlSink

    path = tmp_path / "audit.jsonl"
    drafts = [
        AuditDraft(time=1_700_000_000.0 + n, decision="ALLOWED", message_id=f"m{n}", sender_id="a")
        for n in range(5)
    ]
    with JsonlSink(path, 10_000_000, 2) as sink:
        sink.write(link_many(None, drafts, None))
    ok = _mas("audit", "verify", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "5 records" in ok.stdout
    exported = _mas("audit", "export", str(path), "--format", "csv")
    assert exported.returncode == 0
    assert exported.stdout.count("\n") == 6  # header and five rows
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"sender_id":"a"', '"sender_id":"b"')
    path.write_text("\n".join(lines) + "\n")
    tampered = _mas("audit", "verify", str(path))
    assert tampered.returncode == 1
    assert "seq 3" in tampered.stderr + tampered.stdout
    assert "Traceback" not in tampered.stderr


@pytest.mark.slow
def test_reload_command_reaches_the_running_server_over_its_control_socket(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mas.yaml"
    config.write_text(
        "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\nagents: [{agent_id: a}]\n"
    )
    _assert_clean_error(_mas("reload", str(tmp_path)), 1, "no server is running", "mas serve")
    server = _start("serve", str(tmp_path), cwd=tmp_path)
    socket_file = tmp_path / "mas.yaml.sock"
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "listening on" in line:
                break
        assert stat.S_ISSOCK(socket_file.stat().st_mode)
        assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
        config.write_text(
            "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\nagents: [{agent_id: b}]\n"
        )
        reloaded = _mas("reload", str(tmp_path))
        assert reloaded.returncode == 0, reloaded.stderr
        assert "reloaded" in reloaded.stdout
        for line in server.stderr:
            if "configuration reloaded" in line:
                break
        # A file that does not validate is refused here and never sent: the server keeps
        # the configuration it runs.
        config.write_text("agentz: []\n")
        _assert_clean_error(_mas("reload", str(tmp_path)), 2, "agentz")
        # SIGHUP by hand still works for operators who send it.
        config.write_text(
            "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\nagents: [{agent_id: c}]\n"
        )
        server.send_signal(signal.SIGHUP)
        for line in server.stderr:
            if "configuration reloaded" in line:
                break
    finally:
        assert _stop(server) == 0
    assert not socket_file.exists()
    assert not (tmp_path / "mas.yaml.pid").exists()


def test_reload_never_signals_a_process_a_leftover_file_names(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text("store: {backend: memory}\nagents: [{agent_id: a}]\n")
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"]  # SIGHUP would end it
    )
    try:
        # A server crashed and left a pid file (older mas) and its control socket; the
        # id now belongs to someone else.
        (tmp_path / "mas.yaml.pid").write_text(f"{bystander.pid}\n")
        leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        leftover.bind(str(tmp_path / "mas.yaml.sock"))
        leftover.close()
        _assert_clean_error(_mas("reload", str(tmp_path)), 1, "no server is running")
        assert bystander.poll() is None  # SIGHUP would have ended it
    finally:
        bystander.kill()
        bystander.wait()
