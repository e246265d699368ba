"""The bounds of one DLP scan: its limits, its time budget, and the windows over long text.

Pure, no I/O. Both phases of a scan (:mod:`mas.policy.dlp.collect`, :mod:`mas.policy.dlp.walk`)
stop by raising :class:`ScanStop`, which the scanner turns into a ``DLP_BLOCKED`` result.

:class:`Budget` keeps the cost of the time budget proportional to the work. The scanner's
clock may be a system call (the gateway uses ``time.thread_time``, which costs about as much
as scanning 50 characters), so it is read when the scan starts and then only once the work
charged since the last reading reaches :data:`CLOCK_EVERY` units. A unit is about the cost of
running the rules over one character of text: text is charged its length (a joined chunk
longer than :data:`CLOCK_EVERY` a share of it after each rule, a string or window given to
one rule at a time its whole length per rule), a container :data:`CONTAINER_UNITS` plus
:data:`ITEM_UNITS` per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from mas.policy.dlp.rule import Rule, Span, Views

DEFAULT_BUDGET: Final = 0.050  # seconds of scanning per message before failing closed
MAX_DEPTH: Final = 64  # nested containers; deeper payloads fail closed (and bound recursion)
SCAN_WINDOW_CHARS: Final = 65_536  # longest text one detector call is given
WINDOW_OVERLAP_CHARS: Final = 1_024  # overlap between the windows over a longer string
CLOCK_EVERY: Final = 8_192  # units of work between two readings of the budget's clock
CONTAINER_UNITS: Final = 32  # what visiting a dict or list costs, in characters of text
ITEM_UNITS: Final = 8  # and each of its items
SCALARS: Final = (int, float, type(None))  # never text-scanned (bool is an int)


class ScanStop(Exception):
    """Stop scanning and fail closed: ``rule_id`` is ``scan_budget``, ``scan_depth``..."""

    def __init__(self, rule_id: str, path: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id
        self.path = path


class Budget:
    """The time budget of one scan, on a clock read only every :data:`CLOCK_EVERY` units.

    The deadline is the clock's reading at the start plus ``seconds``. Work is charged with
    :meth:`spent`, which reads the clock only once the credit of :data:`CLOCK_EVERY` units
    is used up, and then refills it: a spent budget is noticed at the first reading after
    the deadline, so a scan overruns it by at most about :data:`CLOCK_EVERY` units of work,
    or by the largest single charge (one rule over one window of text) when that is larger.
    """

    __slots__ = ("clock", "credit", "deadline")

    every: int = CLOCK_EVERY  # units between two readings (a test may lower it)

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.credit = self.every
        self.deadline = clock() + seconds

    def spent(self, units: int) -> bool:
        """Charge ``units`` of work done; True if the clock was read and the time is up."""
        self.credit -= units
        return self.credit <= 0 and self.over()

    def over(self) -> bool:
        """Read the clock now (and refill the credit); True if the deadline has passed."""
        self.credit = self.every
        return self.clock() > self.deadline


def windows(n: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, keep-from) of the overlapping windows over a string of length ``n``."""
    for keep in range(0, n, SCAN_WINDOW_CHARS):
        start = max(0, keep - WINDOW_OVERLAP_CHARS)
        yield start, min(n, keep + SCAN_WINDOW_CHARS + WINDOW_OVERLAP_CHARS), keep


def find(rule: Rule, views: Views, budget: Budget) -> list[Span]:
    """``rule.find`` over the text of ``views``, one window at a time when it is long.

    A match counts in the window where it starts; each window reaches
    :data:`WINDOW_OVERLAP_CHARS` into its neighbours for context. The work is charged to
    ``budget`` after each call; raises :class:`ScanStop` once the budget is found spent.
    """
    text = views.text
    if len(text) <= SCAN_WINDOW_CHARS:
        spans = rule.find(views)
        if budget.spent(len(text)):
            raise ScanStop("scan_budget", "$")
        return spans
    spans = []
    low = views.low
    for start, end, keep in windows(len(text)):
        for a, b, mask in rule.find(Views(text[start:end], low[start:end])):
            if keep <= a + start < keep + SCAN_WINDOW_CHARS:
                spans.append((a + start, b + start, mask))
        if budget.spent(end - start):
            raise ScanStop("scan_budget", "$")
    return spans
