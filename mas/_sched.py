"""What Trio's scheduler is about to do, read cheaply, for code that batches work."""

from __future__ import annotations

import trio


def others_ready() -> bool:
    """True when other tasks are queued to run next (they may add to a batch).

    Trio's run queue, read directly: ``current_statistics()`` also counts the I/O
    backend's waiters, a walk over every registered socket. Should Trio's internals
    change, the answer is "yes" (callers then wait one pass for company, as if others
    were ready).
    """
    try:
        return bool(trio._core._run.GLOBAL_RUN_CONTEXT.runner.runq)
    except AttributeError:
        return True
