"""Correlations and agent state in Redis: plain keys, each step one script.

Correlations
    ``ns:corr:<id>`` is a hash (target, expires_at, the record as JSON) that
    Redis drops ``CORRELATION_GRACE_MS`` after it expires (in Redis time, and
    never sooner than that from now, whatever the caller's clock). The enqueue
    script (``batch``) writes it with its request and deletes it with the reply
    that answers it, after checking it is still there, so a correlation is used
    once even when several servers race for it; ``find_correlations`` reads it.

State
    ``ns:state:<agent>`` maps each key to its JSON text; ``ns:state-bytes``
    keeps each agent's size (UTF-8 bytes of keys and values), checked against
    the limit in the script that writes, so a refused update changes nothing;
    ``ns:state-versions`` keeps each agent's state version (never deleted, so
    a reset does not take it back). Reads, updates (with their version check)
    and resets are each one script: atomic across every server sharing Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from ..base import (
    CORRELATION_EXPIRED,
    CORRELATION_GRACE,
    NOT_THE_TARGET,
    UNKNOWN_CORRELATION,
    Correlation,
    CorrelationRefused,
    StateSnapshot,
    StateTooLargeError,
    StateVersionConflict,
)
from .client import RedisClient
from .keys import Keys
from .scripts import make_script

# ms Redis keeps a correlation after it expires: to tell a late reply it is late, and skew.
CORRELATION_GRACE_MS: Final = int(CORRELATION_GRACE * 1000)

# KEYS: state, state sizes, state versions. ARGV: agent, max bytes, expected
# version ('' = unconditional), then field, value pairs. Returns {1, version}
# when written (or nothing to write), {0} when the state would be too large,
# {2, version} when the version is not the expected one (nothing written).
UPDATE_STATE: Final = make_script(
    "update_state",
    """
local version = redis.call('HGET', KEYS[3], ARGV[1]) or '0'
if ARGV[3] ~= '' and ARGV[3] ~= version then return {2, version} end
if #ARGV < 4 then return {1, version} end
local size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
for i = 4, #ARGV, 2 do
  local f = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], f) == 1 then
    size = size - #f - redis.call('HSTRLEN', KEYS[1], f)
  end
  size = size + #f + #ARGV[i + 1]
end
if size > tonumber(ARGV[2]) then return {0} end
for i = 4, #ARGV, 200 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 199, #ARGV)))
end
redis.call('HSET', KEYS[2], ARGV[1], size)
return {1, redis.call('HINCRBY', KEYS[3], ARGV[1], 1)}
""",
    prelude=False,
)

# KEYS: state, state versions. ARGV: agent. Returns {version, flat field/value list}.
READ_STATE: Final = make_script(
    "read_state",
    """
return {redis.call('HGET', KEYS[2], ARGV[1]) or '0', redis.call('HGETALL', KEYS[1])}
""",
    prelude=False,
)

# KEYS: state, state sizes, state versions. ARGV: agent. Returns the new version.
RESET_STATE: Final = make_script(
    "reset_state",
    """
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
""",
    prelude=False,
)

SCRIPTS: Final = (
    UPDATE_STATE,
    READ_STATE,
    RESET_STATE,
)


class Records:
    """Correlations and state of one namespace."""

    def __init__(self, client: RedisClient, keys: Keys, max_state_bytes: int) -> None:
        self._client = client
        self._keys = keys
        self._max_state_bytes = max_state_bytes

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        """Several look-ups in one pipeline (one round trip); nothing is consumed."""
        if not finds:
            return []
        found = await self._client.call(
            "correlation",
            *(("HMGET", self._keys.correlation(cid), "t", "x", "j") for cid, _ in finds),
        )
        results: list[Correlation | CorrelationRefused] = []
        for (_, replier), (target, expires_at, record) in zip(finds, found, strict=True):
            if target is None:
                results.append(CorrelationRefused(UNKNOWN_CORRELATION))
            elif target.decode() != replier:
                results.append(CorrelationRefused(NOT_THE_TARGET))
            elif float(expires_at) <= now:
                results.append(CorrelationRefused(CORRELATION_EXPIRED))
            else:
                results.append(msgspec.json.decode(record, type=Correlation))
        return results

    async def read_state(self, agent_id: str) -> StateSnapshot:
        version, flat = await self._client.evalsha(
            "state",
            READ_STATE,
            [self._keys.state(agent_id), self._keys.state_versions],
            [agent_id],
        )
        return StateSnapshot(
            version=int(version),
            values={flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)},
        )

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        pairs = [part for key, value in updates.items() for part in (key, value)]
        expected = "" if expected_version is None else str(expected_version)
        outcome = await self._client.evalsha(
            "state",
            UPDATE_STATE,
            [self._keys.state(agent_id), self._keys.state_bytes, self._keys.state_versions],
            [agent_id, self._max_state_bytes, expected, *pairs],
        )
        if outcome[0] == 0:
            raise StateTooLargeError(agent_id)
        if outcome[0] == 2:
            assert expected_version is not None
            raise StateVersionConflict(agent_id, expected_version, int(outcome[1]))
        return int(outcome[1])

    async def reset_state(self, agent_id: str) -> int:
        version = await self._client.evalsha(
            "state",
            RESET_STATE,
            [self._keys.state(agent_id), self._keys.state_bytes, self._keys.state_versions],
            [agent_id],
        )
        return int(version)
