"""``mas init``: the scaffolded project runs with ``mas run`` and its generated test passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mas.cli.init import FILES, TEST_AGENTS_PY

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_init_scaffolds_a_project_that_runs_and_passes_its_test(tmp_path: Path) -> None:
    made = _run("-m", "mas", "init", "myproject", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    project = tmp_path / "myproject"
    assert sorted(p.name for p in project.iterdir()) == sorted(FILES)
    assert "python -m mas run myproject" in made.stdout

    checked = _run("-m", "mas", "check", cwd=project)
    assert checked.returncode == 0, checked.stderr

    ran = _run("-m", "mas", "run", "myproject", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["caller: hello -> HELLO", "caller: world -> WORLD"]
    assert "Traceback" not in ran.stderr
    assert str(project / "mas.sqlite3") in ran.stderr  # says where its store lives
    # Logs for people: a few lines, ending with a one-line summary, not a raw dict.
    log_lines = ran.stderr.splitlines()
    assert len(log_lines) <= 5, ran.stderr
    assert log_lines[-1] == "mas: stopped: 4 message(s) delivered"
    assert "session opened" not in ran.stderr
    debug = _run("-m", "mas", "run", "myproject", "--log-level", "debug", cwd=tmp_path)
    assert debug.returncode == 0, debug.stderr
    assert "session opened" in debug.stderr
    assert "server statistics: {" in debug.stderr

    tested = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "mas.yaml").write_text("agents: []\n")
    again = _run("-m", "mas", "init", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 2
    assert str(tmp_path / "mas.yaml") in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / "mas.yaml").read_text() == "agents: []\n"
    assert not (tmp_path / "agents.py").exists()


def test_the_readme_shows_the_generated_test_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Testing your agents", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    assert block.group(1) == TEST_AGENTS_PY  # and test_init_scaffolds... runs that file


def test_mas_testing_imports_without_trustme_and_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "no_trustme"
    (blocker / "trustme").mkdir(parents=True)
    (blocker / "trustme" / "__init__.py").write_text("raise ImportError('not installed')\n")
    script = (
        "import mas.testing\n"
        "config = mas.testing.make_config(['a'])\n"
        "try:\n"
        "    mas.testing.TestPKI()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'mas[test]'" in result.stdout
