"""When Redis has a message: the wait an accept makes first (``WAIT``, ``WAITAOF``).

By default a message is accepted once its enqueue script ran in Redis's memory.
``AcceptWait`` makes the sender's answer wait for more, once per pipeline that
carries enqueues (so once per batch, whatever its size):

* ``replicas: n`` sends ``WAIT n <timeout>``: ``n`` replicas have received every
  write of the pipeline;
* ``fsync: true`` sends ``WAITAOF 1 n <timeout>`` instead (Redis 7.2 or newer):
  Redis has fsynced them to its append-only file, and so have ``n`` replicas
  (which need ``appendonly yes`` themselves).

When the wait ends with fewer acknowledgements than asked, the enqueues of that
pipeline are refused to their senders (``UNAVAILABLE store_not_durable``). They
are in Redis's memory all the same and may still be delivered, so a sender that
sends again may cause a duplicate: at-least-once, never a loss that was promised
away. A reply's retry is refused as ``unknown_correlation_id`` (its correlation
was used), so replies are not duplicated.

The wait runs on the lane's connection (``WAIT`` counts that connection's writes),
so the operations of the batches behind it wait too: up to ``timeout`` per batch
while replicas are missing.

Pure: the value, its command, and the verdict on Redis's answer.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from redis.exceptions import ResponseError

from .wire import Command

WAITAOF_VERSION: Final = (7, 2)  # the first Redis with WAITAOF
DEFAULT_TIMEOUT: Final = 1.0  # seconds an accept waits for its acknowledgements


class AcceptWait(NamedTuple):
    """What an accepted message waits for: ``replicas`` with it, the AOF fsynced."""

    replicas: int = 0
    fsync: bool = False
    timeout: float = DEFAULT_TIMEOUT  # seconds; then the accept is refused

    @property
    def active(self) -> bool:
        """Whether accepts wait at all."""
        return self.fsync or self.replicas > 0

    def command(self) -> Command:
        """The command that follows a pipeline's writes (0 ms would mean "forever")."""
        ms = max(1, round(self.timeout * 1000))
        if self.fsync:
            return ("WAITAOF", 1, self.replicas, ms)
        return ("WAIT", self.replicas, ms)

    def shortfall(self, reply: Any) -> str | None:
        """None when ``reply`` (to ``command``) acknowledges enough; else what is missing."""
        if isinstance(reply, ResponseError):
            return f"{'WAITAOF' if self.fsync else 'WAIT'} failed: {reply}"
        if self.fsync:
            local, replicas = (int(x) for x in reply)
            if local < 1:
                return f"Redis did not fsync its append-only file within {self.timeout:g} s"
        else:
            replicas = int(reply)
        if replicas < self.replicas:
            what = "fsynced it" if self.fsync else "acknowledged it"
            return (
                f"{replicas} of the {self.replicas} replicas asked for {what} "
                f"within {self.timeout:g} s"
            )
        return None

    def describe(self) -> str:
        """What an accept means under this setting, for the start-up log."""
        if not self.active:
            return "once it is in Redis's memory"
        parts = ["Redis fsynced its append-only file"] if self.fsync else []
        if self.replicas:
            copies = "fsynced it" if self.fsync else "have it"
            parts.append(f"{self.replicas} replica(s) {copies}")
        return f"once {' and '.join(parts)} (waiting up to {self.timeout:g} s)"


NO_WAIT: Final = AcceptWait()  # accepted once in Redis's memory (the default)


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; the leading numeric parts only."""
    parts: list[int] = []
    for part in text.strip().split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() < len(part):  # "8-rc1": what follows is not a version part
            break
    return tuple(parts)
