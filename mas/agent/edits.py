"""``edit_state``'s combining: the waiting edits of one instance share one conditional update.

Each call of ``Agent.edit_state`` queues an ``Edit`` and takes the instance's state lock.
Whoever holds the lock applies every queued edit in turn, each to the state the one before
it left, and stores the result with one conditional update; on a conflict it reads the
state again and applies them all again. So the handlers of one instance never race each
other, and instances race with one update per batch instead of one per edit, which keeps
a busy instance from starving a quiet one.

An edit's own outcome is its own: a change that raises, or leaves a state that misfits the
model, fails that edit alone (its changes are dropped) and the others go on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .state import StateModel

_UNSET: Any = object()


class Edit:
    """One ``edit_state`` call: its change, its attempts left, and in the end its outcome."""

    def __init__(self, change: Callable[[Any], object], attempts: int) -> None:
        self.change = change
        self.attempts_left = attempts
        self.attempts = attempts
        self.result: Any = _UNSET
        self.error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.result is not _UNSET or self.error is not None

    def outcome(self) -> Any:
        """The state stored for this edit, or its error raised."""
        if self.error is not None:
            raise self.error
        return self.result


async def apply_edits(
    model: StateModel, acknowledged: dict[str, str], edits: Sequence[Edit]
) -> tuple[dict[str, str], list[Edit]]:
    """Apply ``edits`` in order to the state ``acknowledged`` holds.

    Returns the keys to store (JSON text, those that differ from ``acknowledged``) and the
    edits that took part; an edit whose change raised an ``Exception`` or misfit the model
    is finished with that error and left out. Cancellation and other ``BaseException``s
    propagate (nothing is stored).
    """
    current = dict(acknowledged)
    applied: list[Edit] = []
    for edit in edits:
        working = model.load(current)
        try:
            outcome = edit.change(working)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome is not None:  # a change may return the new state instead
                working = outcome
            changed = model.changes(current, working)
        except Exception as exc:  # noqa: BLE001 - the caller's change: its error goes to it alone
            edit.error = exc
            continue
        current.update(changed)
        applied.append(edit)
    to_store = {key: text for key, text in current.items() if acknowledged.get(key) != text}
    return to_store, applied
