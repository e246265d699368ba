"""The Redis store's key layout and the decoding of what it reads back (pure).

The layout itself is drawn in ``mas.store.redis``; the Lua scripts
(``mas.store.redis.scripts``) derive queue keys the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import DeadLetter, QueuedMessage


def check_id(kind: str, value: str, forbidden: str) -> str:
    """``value``, if it is non-empty and free of the ``forbidden`` characters."""
    if not value or any(c in value for c in forbidden):
        raise ValueError(f"{kind} {value!r} must be non-empty without {forbidden!r}")
    return value


def queue_name(agent_id: str, instance_id: str | None) -> str:
    """``<agent>`` for the shared queue, ``<agent>/<instance>`` for a reply queue."""
    check_id("agent id", agent_id, "/ ")
    return agent_id if instance_id is None else f"{agent_id}/{instance_id}"


def split_queue_name(q: bytes) -> tuple[str, str | None]:
    """(agent id, instance id or None) of a queue name."""
    agent_id, _, instance_id = q.decode().partition("/")
    return agent_id, instance_id or None


@dataclass(frozen=True)
class Keys:
    """Key and channel names in one namespace."""

    ns: str

    @property
    def waiting(self) -> str:
        return f"{self.ns}:waiting"

    @property
    def delayed(self) -> str:
        return f"{self.ns}:delayed"

    @property
    def dlq_agents(self) -> str:
        return f"{self.ns}:dlq-agents"

    @property
    def state_bytes(self) -> str:
        return f"{self.ns}:state-bytes"

    @property
    def state_versions(self) -> str:
        return f"{self.ns}:state-versions"

    @property
    def servers(self) -> str:
        return f"{self.ns}:servers"

    @property
    def audit(self) -> str:
        return f"{self.ns}:audit"

    @property
    def audit_head(self) -> str:
        return f"{self.ns}:audit-head"

    @property
    def audit_turn(self) -> str:
        return f"{self.ns}:audit-turn"

    @property
    def audit_anchor(self) -> str:
        return f"{self.ns}:audit-anchor"

    @property
    def audit_key_id(self) -> str:
        return f"{self.ns}:audit-key-id"

    @property
    def wake_channel(self) -> str:
        return f"{self.ns}:wake"

    def queue(self, q: str) -> str:
        return f"{self.ns}:queue:{q}"

    def front(self, q: str) -> str:
        return f"{self.ns}:front:{q}"

    def dlq(self, agent_id: str) -> str:
        return f"{self.ns}:dlq:{agent_id}"

    def state(self, agent_id: str) -> str:
        return f"{self.ns}:state:{agent_id}"

    def correlation(self, correlation_id: str) -> str:
        return f"{self.ns}:corr:{correlation_id}"

    def lease(self, server_id: str) -> str:
        return f"{self.ns}:lease:{server_id}"

    def claims(self, server_id: str) -> str:
        return f"{self.ns}:claims:{server_id}"

    def stop_channel(self, server_id: str, token: str) -> str:
        return f"{self.ns}:stop:{server_id}:{token}"


def entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def decode_dead_letter(flat: list[bytes]) -> DeadLetter:
    """A dead letter from its stream entry's field list (written by the scripts)."""
    f = dict(zip(flat[::2], flat[1::2], strict=True))
    return DeadLetter(
        message=QueuedMessage(
            message_id=f[b"m"].decode(),
            target_id=f[b"a"].decode(),
            instance_id=f[b"i"].decode() or None,
            envelope_json=f[b"e"],
            enqueued_at=float(f[b"t"]),
            attempt=int(f[b"n"]),
            not_before=float(f[b"b"]),
        ),
        reason=f[b"r"].decode(),
        dead_lettered_at=float(f[b"d"]),
    )
