"""Real ``mas`` processes for the crash and fault tests: servers, agents, waits, logs.

::

    write_project(tmp_path, config_yaml)           # mas.yaml + `mas certs` (real TLS files)
    with mas_process("serve", str(tmp_path), cwd=tmp_path, log=log) as server:
        wait_for(lambda: "listening on" in read(log), 30, "the server")
    with ServerProcess(tmp_path, log) as server:    # kill -9 / stop / restart, same port
        server.kill(); server.start()

Every process is killed (SIGKILL) and reaped when its block exits, whatever
happened; every wait is bounded and names what it waited for. Agent modules
are found through ``PYTHONPATH`` (``agent_env(*directories)``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn


def unavailable(reason: str, what: str) -> NoReturn:
    """Skip a test whose tool or privilege is missing here; under ``CI=true`` fail it.

    ``.ci/run`` sets ``CI=true`` and installs what the tests need, so there a
    missing tool is a broken CI set-up, never a silently skipped test.
    """
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires {what} to run", pytrace=False)
    pytest.skip(reason)


REAP_TIMEOUT = 30.0  # seconds for a killed process to be reaped
READY_TIMEOUT = 60.0  # seconds for a server to say it is listening (a restart replays a WAL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_env(*directories: Path) -> dict[str, str]:
    """The environment of a child ``mas`` process: ``directories`` on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, directories), env.get("PYTHONPATH", "")])
    return env


def read(log: Path) -> str:
    """The text of a log file so far ('' before it exists)."""
    return log.read_text(errors="replace") if log.exists() else ""


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def start_mas(
    *args: str, cwd: Path, log: Path, path: tuple[Path, ...] = (), runner: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``python -m mas ARGS`` (or ``python RUNNER... ARGS``), output appended to ``log``."""
    command = [*runner] if runner else ["-m", "mas"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *command, *args],
            cwd=cwd,
            env=agent_env(*path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def reap(process: subprocess.Popen[bytes]) -> None:
    """Kill the process if it still runs (resuming it if stopped) and wait for it."""
    if process.poll() is None:
        process.kill()  # SIGKILL also ends a SIGSTOPped process
    process.wait(timeout=REAP_TIMEOUT)


@contextmanager
def mas_process(
    *args: str, cwd: Path, log: Path, path: tuple[Path, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m mas ARGS`` for the duration of the block; killed and reaped on exit."""
    process = start_mas(*args, cwd=cwd, log=log, path=path)
    try:
        yield process
    finally:
        reap(process)


class ServerProcess:
    """One ``mas serve CONFIG_DIR`` that can be killed, stopped and restarted on its port.

    ``start`` waits until the new process logs ``listening on`` (a line written
    after the log's previous size, so a restart is not fooled by the last run's
    line). Used as a context manager it is started on entry and reaped on exit.
    """

    def __init__(
        self,
        config_dir: Path,
        log: Path,
        *,
        path: tuple[Path, ...] = (),
        runner: tuple[str, ...] = (),
    ) -> None:
        self.config_dir = config_dir
        self.log = log
        self.path = path
        self.runner = runner
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = READY_TIMEOUT) -> float:
        """Start the server; returns the seconds it took to be listening."""
        assert not self.alive(), "already running"
        offset = self.log.stat().st_size if self.log.exists() else 0
        began = time.monotonic()
        self.process = start_mas(
            "serve",
            str(self.config_dir),
            cwd=self.config_dir,
            log=self.log,
            path=self.path,
            runner=self.runner,
        )
        self.starts += 1
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"the server exited with {process.returncode} while starting:\n"
                    + read(self.log)[offset:][-3000:]
                )
            with self.log.open("rb") as file:
                file.seek(offset)
                return b"listening on" in file.read()

        wait_for(listening, timeout, f"the server in {self.config_dir} to listen")
        return time.monotonic() - began

    def kill(self) -> None:
        """kill -9, and reap it."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=REAP_TIMEOUT)

    def signal(self, signum: int) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signum)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop); returns the exit status."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)  # harmless if it was not stopped
            reap(self.process)

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.reap()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reap()


def make_certs(config_dir: Path, *, path: tuple[Path, ...] = ()) -> None:
    """Write the development PKI that ``config_dir/mas.yaml`` names (``mas certs``)."""
    certs = subprocess.run(
        [sys.executable, "-m", "mas", "certs", str(config_dir)],
        env=agent_env(*path),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert certs.returncode == 0, certs.stderr
