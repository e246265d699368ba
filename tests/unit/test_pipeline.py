"""The gateway's policy pipeline: decision values, order, and compensation declared once."""

from __future__ import annotations

from typing import Any

from mas.config import DlpConfig
from mas.errors import Reason
from mas.policy.breaker import BreakerBook, BreakerSettings
from mas.policy.dlp import DlpScanner
from mas.policy.pipeline import (
    Admitted,
    Allow,
    Breaker,
    Deny,
    Dlp,
    Filter,
    Kind,
    Message,
    Redact,
    Verdict,
    run,
)

SETTINGS = BreakerSettings(
    failure_threshold=1, success_threshold=1, timeout_seconds=10.0, window_seconds=100.0
)
T0 = 1_000.0


def message(kind: Kind = "send", data: dict[str, Any] | None = None) -> Message:
    return Message(kind, "a", "b", "t", {"x": 1} if data is None else data)


class Fixed(Filter):
    """A filter that answers ``verdict`` and records its calls."""

    def __init__(self, verdict: Verdict, log: list[str], name: str) -> None:
        self.verdict, self.log, self.name = verdict, log, name

    def check(self, message: Message, now: float) -> Verdict:
        self.log.append(f"check {self.name}")
        return self.verdict

    def release(self, message: Message, now: float) -> None:
        self.log.append(f"release {self.name}")


def test_the_first_deny_stops_the_run_and_releases_the_earlier_filters_latest_first() -> None:
    log: list[str] = []
    deny = Deny(Reason.DLP_BLOCKED, "DLP_BLOCKED")
    filters = [
        Fixed(Allow(), log, "1"),
        Fixed(Allow(), log, "2"),
        Fixed(deny, log, "3"),
        Fixed(Allow(), log, "4"),
    ]
    assert run(filters, message(), T0) is deny
    assert log == ["check 1", "check 2", "check 3", "release 2", "release 1"]


def test_allowed_messages_release_nothing_and_keep_redactions_and_alerts() -> None:
    log: list[str] = []
    redacted = {"x": "[REDACTED:ssn]"}
    filters = [Fixed(Allow(), log, "1"), Fixed(Redact(redacted, ()), log, "2")]
    assert run(filters, message(), T0) == Admitted(redacted, "DLP_REDACTED", ())
    assert log == ["check 1", "check 2"]
    alert = run([Fixed(Allow("ALERT"), log, "3")], message(), T0)
    assert isinstance(alert, Admitted) and alert.decision == "ALERT"


def half_open_book() -> BreakerBook:
    book = BreakerBook(SETTINGS)
    book.record_failure("b", T0)  # opens
    return book


def test_a_later_denial_gives_back_the_breakers_half_open_trial() -> None:
    book = half_open_book()
    later = T0 + 11.0  # past the timeout: half-open, one trial
    block = Dlp(DlpScanner.from_config(DlpConfig()))
    outcome = run([Breaker(book), block], message(data={"password": "hunter2222"}), later)
    assert isinstance(outcome, Deny) and outcome.reason == "dlp_blocked"
    assert book.admit("b", later).allowed  # the trial slot was given back
    assert not book.admit("b", later).allowed  # and is now taken


def test_replies_skip_the_breaker() -> None:
    book = half_open_book()
    assert isinstance(run([Breaker(book)], message(), T0 + 1.0), Deny)  # open for a send
    assert isinstance(run([Breaker(book)], message("reply"), T0 + 1.0), Admitted)
