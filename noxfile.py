"""Developer and CI sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``proto``, ``examples``."""

from __future__ import annotations

import tempfile

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "proto"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
SOURCES = ["mas", "tests", "examples", "tools", "benchmarks", "noxfile.py"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (pass pytest options after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the mas package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def proto(session: nox.Session) -> None:
    """Check that mas/_proto matches proto/ (``nox -s proto -- --write`` regenerates it)."""
    session.install("grpcio-tools==1.85.1")
    if "--write" in session.posargs:
        session.run("python", "tools/gen_proto.py")
    else:
        session.run("python", "tools/gen_proto.py", "--check")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every example to completion."""
    session.install("-e", ".")
    session.run("python", "-m", "mas", "run", "examples/ping_pong")
    with tempfile.TemporaryDirectory(prefix="mas-init-") as project:  # `mas init`, as generated
        session.run("python", "-m", "mas", "init", project)
        session.run("python", "-m", "mas", "run", project)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmarks of docs/performance.md (not run by default; ``-- --quick`` for CI)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)
