"""Shared fixtures: one test PKI per session."""

from __future__ import annotations

import pytest

from mas.testing import TestPKI


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI()
