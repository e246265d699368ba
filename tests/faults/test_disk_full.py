"""The disk under the SQLite store fills up under load, then space comes back.

Real processes and a real full filesystem: the store's file lives on a
size-limited tmpfs mounted for the test (``mount -t tmpfs -o size=...``, which
needs root; elsewhere the test is skipped with the reason, and fails under
``CI=true``). Under load, a filler file takes every free byte. The senders
must get a clear refusal (``UNAVAILABLE``: the store cannot write) rather than
a silent hang, the server must stay up, and once the filler is deleted the
sends must be accepted again by themselves. Nothing accepted may be lost.
Short form: 5 s full, the store alone on the disk; ``--long-faults``: 30 s,
and also with the JSONL audit file on that disk.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_harness import (
    HERE,
    AgentSpec,
    Tally,
    agent_process,
    certify,
    drain,
    expect,
    long_faults,
    recovered_after,
    report,
    tail,
    wait_accepted,
    write_project,
)
from processes import ServerProcess, free_port, unavailable, wait_for

pytestmark = pytest.mark.slow

DISK_MB = 24  # the tmpfs: room for the store, its WAL, and the filler


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The store alone on the small disk; ``--long-faults``: also with the JSONL audit file."""
    if "audit_file" in metafunc.fixturenames:
        both = long_faults(metafunc.config)
        metafunc.parametrize(
            "audit_file",
            [False, True] if both else [False],
            ids=["store", "store+audit-file"][: 2 if both else 1],
        )


@contextlib.contextmanager
def small_filesystem(mount_point: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` at ``mount_point`` for the block; unmounted after."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(
            f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}",
            "the disk-full test",
        )
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(
            ["umount", str(mount_point)], capture_output=True, timeout=30, check=False
        )
        if unmounted.returncode != 0:  # a process we failed to reap still holds a file
            subprocess.run(["umount", "-l", str(mount_point)], timeout=30, check=False)


def fill(directory: Path) -> Path:
    """A file in ``directory`` that takes every free byte (written until ENOSPC)."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        small = b"\0" * 512  # the last bytes of a partly used page
        with contextlib.suppress(OSError):
            while True:
                file.write(small)
    return filler


def test_full_disk_is_refused_clearly_and_recovered_from(
    tmp_path: Path, audit_file: bool, request: pytest.FixtureRequest
) -> None:
    full_for = 30.0 if long_faults(request.config) else 5.0
    count = 1500
    with small_filesystem(tmp_path / "disk", DISK_MB) as disk:
        write_project(
            tmp_path,
            port=free_port(),
            store=f"{{backend: sqlite, path: '{disk / 'mas.sqlite3'}'}}",
            agents=[
                AgentSpec("sender", "Sender", {"targets": ["recorder"], "count": count}),
                AgentSpec("recorder", "Recorder"),
            ],
            permissions=[{"type": "allow", "sender": "sender", "targets": ["recorder"]}],
            gateway={"audit": {"file_path": str(disk / "audit.jsonl")}} if audit_file else None,
        )
        certify(tmp_path)
        server_log, sender_log, recorder_log = (
            tmp_path / f"{name}.log" for name in ("server", "sender", "recorder")
        )
        with ServerProcess(tmp_path, server_log, path=(HERE,)) as server:
            with (
                agent_process("recorder", tmp_path, recorder_log) as recorder,
                agent_process("sender", tmp_path, sender_log) as sender,
            ):
                wait_accepted([sender_log], 200, 120, "sends before the disk fills")
                filler = fill(disk)
                filled = time.time()

                def refused() -> bool:
                    return any(t > filled for t, _ in Tally.read(sender_log).refusals)

                wait_for(refused, 60, "a refusal of a send once the disk is full")
                end = time.monotonic() + full_for  # the disk stays full: the server must stay up
                while time.monotonic() < end and server.alive():
                    time.sleep(0.1)
                died = None if server.alive() else round(time.time() - filled, 1)
                death = "" if died is None else tail(server_log, 600)
                during = [text for t, text in Tally.read(sender_log).refusals if t > filled]
                filler.unlink()
                freed = time.time()
                if died is not None:  # as a supervisor would, so that loss can still be counted
                    server.start()
                recovery = recovered_after([sender_log], freed, 60, "a send accepted once freed")
                assert sender.wait(timeout=180) == 0, tail(sender_log)
                tally = drain([sender_log], [recorder_log])
                report(
                    f"sqlite disk full {full_for:g}s" + (" (audit file too)" if audit_file else ""),
                    **tally.figures(),
                    refusals_while_full=len(during),
                    first_refusal=during[0][:200],
                    recover_seconds=round(recovery, 2),
                    server_died_after_seconds=died,
                )
                assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
                assert len(tally.accepted) >= count
                assert recorder.poll() is None, tail(recorder_log)
            assert server.alive(), tail(server_log)
            assert server.terminate() == 0, tail(server_log)
    # Last, so that everything above holds whatever else: the server stayed up, and what the
    # senders got was a refusal, not a connection lost with the send's fate unknown.
    expect(died is None, f"the server exited {died} s after the disk filled: {death}")
    unclear = [text for text in during if "unavailable" not in text.lower()]
    expect(not unclear, f"{len(unclear)} of {len(during)} refusals do not say why: {unclear[:3]}")
