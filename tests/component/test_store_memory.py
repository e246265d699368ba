"""The store contract on the in-memory backend."""

from __future__ import annotations

import pytest
from audit_contract import *  # noqa: F403
from state_contract import *  # noqa: F403
from store_contract import *  # noqa: F403
from store_contract import LIMITS

from mas.store import MemoryStore, Store


@pytest.fixture
def store() -> Store:
    return MemoryStore(LIMITS)
