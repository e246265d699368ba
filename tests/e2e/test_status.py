"""``mas status`` (and ``--json``) against real ``mas run`` and ``mas serve`` processes,
on every store; ``mas dlq list`` and ``replay`` through the running server, on every store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from operating import (
    STORES,
    agent_row,
    mas_command,
    status_json,
    write_load_project,
)
from processes import free_port, mas_process, read, wait_for


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_status_of_mas_run_shows_agents_traffic_and_the_store(
    tmp_path: Path, store: str, redis_url: str | None
) -> None:
    write_load_project(tmp_path, store=store, redis_url=redis_url)
    log = tmp_path / "run.log"
    with mas_process("run", str(tmp_path), cwd=tmp_path, log=log, path=(tmp_path,)):
        wait_for(lambda: "listening on" in read(log), 60, "the server")

        def traffic() -> bool:
            snapshot = status_json(tmp_path)
            return agent_row(snapshot, "sink")["delivered"] >= 5

        wait_for(traffic, 60, "messages delivered to sink")
        snapshot = status_json(tmp_path)
        assert snapshot["store"]["backend"] == store
        assert snapshot["store"]["reachable"] is True
        assert snapshot["listen"].startswith("127.0.0.1:")
        assert snapshot["sessions"] == 2
        sender, sink = agent_row(snapshot, "sender"), agent_row(snapshot, "sink")
        assert (sender["connected"], sender["instances"]) == (1, 1)
        assert sender["sent"] >= sink["delivered"] >= 5
        assert sink["queue_depth"] is not None
        assert sink["dead_letters"] == 0
        assert sink["last_activity"] is not None
        assert snapshot["decisions_last_minute"]["ALLOWED"] >= 5
        assert snapshot["decisions_last_minute"]["DELIVERED"] >= 5
        assert snapshot["breakers"] == []
        assert snapshot["uptime"] > 0

        text = mas_command("status", str(tmp_path), cwd=tmp_path)
        assert text.returncode == 0, text.stderr
        assert f"store      {store}" in text.stdout
        assert "reachable" in text.stdout
        assert "sender" in text.stdout and "sink" in text.stdout
        assert "last minute  " in text.stdout and "ALLOWED" in text.stdout
        assert "breakers     all closed" in text.stdout
    # The server is gone: a clear error, no traceback.
    gone = mas_command("status", str(tmp_path), cwd=tmp_path)
    assert gone.returncode == 1
    assert "no server is running" in gone.stderr and "mas serve" in gone.stderr
    assert "Traceback" not in gone.stderr


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_status_of_mas_serve_counts_agents_of_other_processes(
    tmp_path: Path, store: str, redis_url: str | None
) -> None:
    write_load_project(tmp_path, store=store, redis_url=redis_url, port=free_port(), certs=True)
    log = tmp_path / "serve.log"
    with mas_process("serve", str(tmp_path), cwd=tmp_path, log=log, path=(tmp_path,)):
        wait_for(lambda: "listening on" in read(log), 60, "the server")
        idle = status_json(tmp_path)
        assert [row["connected"] for row in idle["agents"]] == [0, 0]
        assert idle["decisions"] == {} or set(idle["decisions"]) == {"CONTROL"}
        agents_log = tmp_path / "agents.log"
        with (
            mas_process("agent", "sink", str(tmp_path), cwd=tmp_path, log=agents_log),
            mas_process("agent", "sender", str(tmp_path), cwd=tmp_path, log=agents_log),
        ):
            wait_for(
                lambda: agent_row(status_json(tmp_path), "sink")["delivered"] >= 5,
                60,
                "messages delivered to sink",
            )
            busy = status_json(tmp_path)
            assert agent_row(busy, "sink")["connected"] == 1
            assert agent_row(busy, "sink")["instances"] == 1
            assert busy["store"]["reachable"] is True
    assert "Traceback" not in read(log)


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_dlq_replay_goes_through_the_running_server(
    tmp_path: Path, store: str, redis_url: str | None
) -> None:
    # SQLite: the running server holds the file; memory: only it has the dead letters.
    write_load_project(tmp_path, store=store, redis_url=redis_url, count=3, pause=0.2, flaky=True)
    log = tmp_path / "run.log"
    with mas_process("run", str(tmp_path), cwd=tmp_path, log=log, path=(tmp_path,)):
        wait_for(lambda: "listening on" in read(log), 60, "the server")
        wait_for(
            lambda: agent_row(status_json(tmp_path), "sink")["dead_letters"] == 1,
            60,
            "the first tick dead-lettered",
        )
        # The listing goes through the server too: audited, and on memory it is the only way.
        listed = mas_command("dlq", "list", str(tmp_path), "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "not in the audit trail" not in listed.stderr
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (entry["target_id"], entry["sender_id"], entry["attempts"]) == ("sink", "sender", 1)
        assert entry["envelope"]["data"] == {"index": 0}
        replayed = mas_command("dlq", "replay", "--all", "--config", str(tmp_path), cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1 message(s)" in replayed.stdout
        # The server woke the sink: the replayed tick is handled now (it no longer fails).
        wait_for(
            lambda: agent_row(status_json(tmp_path), "sink")["dead_letters"] == 0,
            30,
            "the replayed tick out of the dead-letter queue",
        )
        wait_for(
            lambda: agent_row(status_json(tmp_path), "sink")["delivered"] == 3,
            30,
            "every tick delivered",
        )
    if store == "memory":
        return  # its trail went with the process
    audit = mas_command("audit", "tail", "--json", "--config", str(tmp_path), cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    [replay] = [r for r in records if r["decision"] == "DLQ_REPLAYED"]
    assert "replayed by" in replay["reason"]
    control = [r["reason"] for r in records if r["decision"] == "CONTROL"]
    assert any(reason.startswith("dlq replay by uid") for reason in control)
    assert any(reason.startswith("dlq list by uid") for reason in control)
    [listing] = [r for r in records if r["decision"] == "DLQ_LISTED"]
    assert "listed by" in listing["reason"] and "(1 message(s))" in listing["reason"]
    assert any(reason.startswith("status by uid") for reason in control)
