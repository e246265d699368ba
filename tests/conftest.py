"""Shared fixtures: one test PKI per session; the ``--long-faults`` option."""

from __future__ import annotations

import pytest

from mas.testing import TestPKI


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long-faults",
        action="store_true",
        default=False,
        help="run the long forms of tests/faults (more kills, longer outages, a 20-minute soak;"
        " also MAS_LONG_FAULTS=1)",
    )


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI()
