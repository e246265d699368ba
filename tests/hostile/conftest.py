"""The ``hostile_server`` fixture; the harness itself is ``attack_harness.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hostile_server import ServerProcess, serve
from probe import PROBE_AGENTS, PROBE_PERMISSIONS

from mas.testing import TestPKI


@pytest.fixture
def hostile_server(tmp_path: Path, pki: TestPKI) -> Callable[..., Any]:
    """``with hostile_server(limits={...}, agents=[...]) as server:`` runs ``mas serve``."""

    @contextmanager
    def start(
        *,
        limits: dict[str, Any] | None = None,
        agents: tuple[str, ...] = (),
        permissions_extra: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Iterator[ServerProcess]:
        with serve(
            tmp_path,
            pki,
            [*PROBE_AGENTS, "mallet", *agents],
            fast_agents=(*PROBE_AGENTS, "mallet"),
            limits=limits,
            permissions=[*PROBE_PERMISSIONS, *(permissions_extra or [])],
            extra=extra,
        ) as server:
            yield server
            assert "Traceback" not in "\n".join(server.log())

    return start
