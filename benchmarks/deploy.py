"""The processes of one repetition: ``mas serve``, ``redis-server`` and the agents process.

Every child runs in its own process group (``start_new_session``) so that stopping it also
stops anything it started; stopping is SIGTERM, a bounded wait, then SIGKILL of that group,
and it happens in ``finally`` blocks, so an error or a timeout never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from .procstat import peak_rss_bytes

REPO: Final = Path(__file__).resolve().parent.parent
LISTENING_RE: Final = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT: Final = 30.0  # seconds for a server to log "listening on"
STOP_TIMEOUT: Final = 10.0  # seconds for a graceful stop before SIGKILL
POLL_INTERVAL: Final = 0.02  # seconds between looks at a starting child's log


class BenchError(Exception):
    """A repetition could not run (a process failed or missed its deadline)."""


def child_env() -> dict[str, str]:
    """The environment of child processes: ``benchmarks`` importable, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


class Child:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or REPO,
                env=child_env(),
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        """The exit status; ``BenchError`` if the child is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.log_path.stem} still running after {timeout:.0f} s") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the child's process group, wait up to ``timeout``, then SIGKILL it.

        Signals go to the group only while its leader (our child) is alive, so the group id
        cannot have been reused by an unrelated process.
        """
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        finally:
            self._log.close()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A fresh ``redis-server`` on loopback without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("no redis-server on PATH")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly"]
    argv += ["no", "--dir", str(directory), "--maxclients", "20000"]
    child = Child(argv, directory / "redis.log", cwd=directory)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"redis-server did not start:\n{tail(child.log_path)}")
            time.sleep(POLL_INTERVAL)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


class Server(Child):
    """``python -m mas serve CONFIG``; ``address`` once it logged "listening on".

    With ``profile=("cprofile", path)`` the server runs under ``python -m cProfile -o path``;
    with ``("py-spy", path)`` under ``py-spy record`` (raw collapsed stacks, native frames
    included). ``pid`` is always the Python server's own pid, so its /proc readings are right.
    """

    def __init__(self, config_path: Path, profile: tuple[str, Path] | None = None) -> None:
        serve = ["-m", "mas", "serve", str(config_path)]  # logs at INFO, as deployed
        argv = [sys.executable, *serve]
        if profile is not None and profile[0] == "cprofile":
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile[1]), *serve]
        elif profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            argv = [spy, "record", "--native", "-r", "200", "-f", "raw", "-o", str(profile[1])]
            argv += ["--", sys.executable, *serve]
        super().__init__(argv, config_path.parent / "server.log")
        self._wrapped = profile is not None and profile[0] != "cprofile"
        self.address = ""

    @property
    def pid(self) -> int:
        if not self._wrapped:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def wait_listening(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING_RE.search(self.log_path.read_text(errors="replace"))
            if match:
                self.address = f"{match[1]}:{match[2]}"
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(POLL_INTERVAL)
        raise BenchError("the server did not start listening")

    def peak_rss(self) -> int | None:
        try:
            return peak_rss_bytes(self.pid)
        except (OSError, LookupError, IndexError):
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._wrapped and self.proc.poll() is None:
            # Stop the server itself first: py-spy writes its file when its target exits.
            with contextlib.suppress(OSError, IndexError, ValueError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        super().stop(timeout)
