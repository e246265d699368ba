"""``mas top`` in a real terminal: driven in tmux (send-keys) and read back (capture-pane)
against a ``mas run`` server under load."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from operating import STORES, write_load_project
from processes import mas_process, read, unavailable, wait_for

SCREEN_TIMEOUT = 30.0  # seconds for the screen to show what a step waits for


def require_tmux() -> str:
    """The path of ``tmux``; skip (or fail under ``CI=true``) when it is missing."""
    path = shutil.which("tmux")
    if path is None:
        unavailable("tmux is not installed (apt-get install tmux)", "the top test")
    return path


class Tmux:
    """A private tmux server (its own socket) with one session running a command."""

    def __init__(self, tmux: str) -> None:
        self._tmux = tmux
        self._base = self._new_server()

    def _new_server(self) -> list[str]:
        return [self._tmux, "-L", f"mas-test-{uuid.uuid4().hex[:8]}", "-f", os.devnull]

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [*self._base, *args], capture_output=True, text=True, timeout=10, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "top", "-x", "110", "-y", "30", command)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def wait_screen(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + SCREEN_TIMEOUT
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")

    def kill(self) -> None:
        """Stop this tmux server; a later ``start`` gets a new one.

        A new session on the socket of a server that is still exiting fails with
        "server exited unexpectedly", so the next one never reuses the socket.
        """
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=10, check=False)
        self._base = self._new_server()


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(require_tmux())
    try:
        yield server
    finally:
        server.kill()


def _row(screen: str, agent_id: str) -> list[str]:
    [line] = [line for line in screen.splitlines() if line.startswith(agent_id + " ")]
    return line.split()


def _moving(screen: str) -> bool:
    """Both agents are on screen with a rate above zero (sender in, sink out)."""
    try:
        sender, sink = _row(screen, "sender"), _row(screen, "sink")
    except ValueError:
        return False
    return float(sender[2].replace(",", "")) > 0 and float(sink[3].replace(",", "")) > 0


def _script(directory: Path, name: str) -> str:
    """A bash command: the terminal settings before and after `mas top`, and its status.

    bash goes on after a child that handled Ctrl-C itself (exit status 0), so the
    settings after are read whichever way top was left.
    """
    top = shlex.join([sys.executable, "-m", "mas", "top", str(directory)])
    out = directory / name
    script = directory / f"{name}.sh"
    script.write_text(
        f"stty -g > {out}.before\n{top} 2> {out}.stderr\necho $? > {out}.status\n"
        f"stty -g > {out}.after\ntouch {out}.done\nsleep 60\n"
    )
    return shlex.join(["bash", str(script)])


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_top_shows_the_live_server_sorts_on_keys_and_restores_the_terminal(
    tmp_path: Path, tmux: Tmux, store: str, redis_url: str | None
) -> None:
    write_load_project(tmp_path, store=store, redis_url=redis_url, pause=0.005)
    log = tmp_path / "run.log"
    with mas_process("run", str(tmp_path), cwd=tmp_path, log=log, path=(tmp_path,)):
        wait_for(lambda: "listening on" in read(log), 60, "the server")
        tmux.start(_script(tmp_path, "q"))
        screen = tmux.wait_screen(_moving, "both agents moving")
        assert "mas top" in screen
        assert f"store {store}" in screen and "reachable" in screen
        assert "in " in screen and "msg/s" in screen and "routing p50" in screen
        assert "sorted by rate" in screen
        header = next(line for line in screen.splitlines() if line.startswith("AGENT"))
        assert header.split()[:4] == ["AGENT", "INST", "IN/S", "OUT/S"]
        # Sorted by rate: both move, so both rows are there; then by depth, and back.
        tmux.keys("d")
        tmux.wait_screen(lambda s: "sorted by depth" in s, "the depth sort")
        tmux.keys("r")
        tmux.wait_screen(lambda s: "sorted by rate" in s, "the rate sort")
        tmux.keys("q")
        wait_for(lambda: (tmp_path / "q.done").exists(), SCREEN_TIMEOUT, "top to quit on q")
        assert (tmp_path / "q.status").read_text().strip() == "0"
        assert (tmp_path / "q.before").read_text() == (tmp_path / "q.after").read_text()
        assert (tmp_path / "q.stderr").read_text() == ""
        # Back on the main screen: top's lines are gone with the alternate screen.
        assert "sorted by" not in tmux.screen()
        tmux.kill()

        # Ctrl-C quits as cleanly.
        tmux.start(_script(tmp_path, "c"))
        tmux.wait_screen(lambda s: "mas top" in s, "top again")
        tmux.keys("C-c")
        wait_for(lambda: (tmp_path / "c.done").exists(), SCREEN_TIMEOUT, "top to quit on C-c")
        assert (tmp_path / "c.status").read_text().strip() == "0"
        assert (tmp_path / "c.before").read_text() == (tmp_path / "c.after").read_text()
        assert "Traceback" not in (tmp_path / "c.stderr").read_text()


def test_top_without_a_server_says_so_and_leaves_the_terminal_alone(tmp_path: Path) -> None:
    write_load_project(tmp_path, store="memory")
    result = subprocess.run(
        [sys.executable, "-m", "mas", "top", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no server is running" in result.stderr
    assert "Traceback" not in result.stderr
    assert "\x1b[" not in result.stdout  # no escape sequence was written
