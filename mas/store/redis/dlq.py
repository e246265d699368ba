"""Dead letters in Redis: one stream per agent (``ns:dlq:<agent>``), read and replayed.

Scripts write them (``dead_letter``, and expiry in ``claim``, ``release`` and
reclaims) with the whole message, the reason and the time; each stream is
trimmed to about ``MAX_DEAD_LETTERS`` entries. ``ns:dlq-agents`` lists the
agents that have any.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..base import DeadLetter
from . import scripts as lua
from .client import Command, RedisClient
from .keys import Keys, decode_dead_letter, entry_order

DeadLetterEntry = tuple[str, bytes, DeadLetter]  # (agent id, entry id, dead letter)


async def dead_letter_entries(
    client: RedisClient, keys: Keys, agent_id: str | None
) -> list[DeadLetterEntry]:
    """An agent's dead letters (or every agent's), oldest first."""
    if agent_id is not None:
        agents = [agent_id]
    else:
        [members] = await client.call("dlq", ("SMEMBERS", keys.dlq_agents))
        agents = sorted(m.decode() for m in members)
    if not agents:
        return []
    streams = await client.call("dlq", *(("XRANGE", keys.dlq(agent), "-", "+") for agent in agents))
    found = [
        (agent, entry_id, decode_dead_letter(fields))
        for agent, entries in zip(agents, streams, strict=True)
        for entry_id, fields in entries
    ]
    if agent_id is None:
        found.sort(key=lambda e: (e[2].dead_lettered_at, entry_order(e[1])))
    return found


async def replay(
    client: RedisClient, keys: Keys, message_ids: Sequence[str] | None, now: float
) -> list[DeadLetter]:
    """Put dead letters (all, or those with these message ids) back in their queues.

    One script per agent, all in one round trip; an entry another caller
    replayed meanwhile is not replayed twice.
    """
    wanted = None if message_ids is None else set(message_ids)
    chosen = [
        entry
        for entry in await dead_letter_entries(client, keys, None)
        if wanted is None or entry[2].message.message_id in wanted
    ]
    by_agent: dict[str, list[bytes]] = {}
    for agent_id, entry_id, _ in chosen:
        by_agent.setdefault(agent_id, []).append(entry_id)
    if not by_agent:
        return []
    commands: list[Command] = [
        (
            "EVALSHA",
            lua.REPLAY.sha,
            3,
            keys.waiting,
            keys.dlq(agent_id),
            keys.dlq_agents,
            keys.ns,
            repr(now),
            keys.wake_channel,
            agent_id,
            *entry_ids,
        )
        for agent_id, entry_ids in by_agent.items()
    ]
    replies = await client.call("dlq", *commands)
    replayed = {entry_id for reply in replies for entry_id in reply}
    return [dead for _, entry_id, dead in chosen if entry_id in replayed]
