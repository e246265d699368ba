"""Correlations and agent state in Redis: plain keys, each step one script.

Correlations
    ``ns:corr:<id>`` is a hash (target, expires_at, the record as JSON) that
    Redis drops ``CORRELATION_GRACE_MS`` after it expires (in Redis time, and
    never sooner than that from now, whatever the caller's clock); ``take``
    checks the target and the caller's ``now`` and deletes it in one script, so
    a correlation is used once even when several servers race for it.

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
from typing import Any, Final

import msgspec

from .base import (
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
from .redis_keys import Keys
from .redis_link import RedisLink
from .redis_scripts import make_script

# ms Redis keeps a correlation after it expires: to tell a late reply it is late, and skew.
CORRELATION_GRACE_MS: Final = int(CORRELATION_GRACE * 1000)

# KEYS: correlation. ARGV: target, expires_at, record (JSON), grace ms.
PUT_CORRELATION: Final = make_script(
    "put_correlation",
    """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at_ms = math.max(math.floor(tonumber(ARGV[2]) * 1000), now_ms)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'x', ARGV[2], 'j', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], at_ms + tonumber(ARGV[4]))
return 1
""",
    prelude=False,
)

# KEYS: correlation. ARGV: replier, now.
# Returns {0} unknown, {1} not the target's (kept), {2, record} taken, {3} expired (kept).
TAKE_CORRELATION: Final = make_script(
    "take_correlation",
    """
local rec = redis.call('HMGET', KEYS[1], 't', 'x', 'j')
if not rec[1] then return {0} end
if rec[1] ~= ARGV[1] then return {1} end
if tonumber(rec[2]) <= tonumber(ARGV[2]) then return {3} end
redis.call('DEL', KEYS[1])
return {2, rec[3]}
""",
    prelude=False,
)

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
    PUT_CORRELATION,
    TAKE_CORRELATION,
    UPDATE_STATE,
    READ_STATE,
    RESET_STATE,
)


class Records:
    """Correlations and state of one namespace."""

    def __init__(self, link: RedisLink, keys: Keys, max_state_bytes: int) -> None:
        self._link = link
        self._keys = keys
        self._max_state_bytes = max_state_bytes

    async def put_correlation(self, correlation: Correlation) -> None:
        await self._link.evalsha(
            "correlation",
            PUT_CORRELATION,
            [self._keys.correlation(correlation.correlation_id)],
            [
                correlation.target_id,
                repr(correlation.expires_at),
                msgspec.json.encode(correlation),
                CORRELATION_GRACE_MS,
            ],
        )

    async def take_correlation(
        self, correlation_id: str, replier_id: str, now: float
    ) -> Correlation:
        outcome = await self._link.evalsha(
            "correlation",
            TAKE_CORRELATION,
            [self._keys.correlation(correlation_id)],
            [replier_id, repr(now)],
        )
        taken = _taken(outcome)
        if isinstance(taken, CorrelationRefused):
            raise taken
        return taken

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        """Several look-ups in one pipeline (one round trip); nothing is consumed."""
        if not finds:
            return []
        found = await self._link.call(
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

    async def get_state(self, agent_id: str) -> dict[str, str]:
        [flat] = await self._link.call("state", ("HGETALL", self._keys.state(agent_id)))
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    async def read_state(self, agent_id: str) -> StateSnapshot:
        version, flat = await self._link.evalsha(
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
        outcome = await self._link.evalsha(
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
        version = await self._link.evalsha(
            "state",
            RESET_STATE,
            [self._keys.state(agent_id), self._keys.state_bytes, self._keys.state_versions],
            [agent_id],
        )
        return int(version)


def _taken(outcome: Any) -> Correlation | CorrelationRefused:
    """The reply of TAKE_CORRELATION as a correlation or a refusal."""
    if outcome[0] == 0:
        return CorrelationRefused(UNKNOWN_CORRELATION)
    if outcome[0] == 1:
        return CorrelationRefused(NOT_THE_TARGET)
    if outcome[0] == 3:
        return CorrelationRefused(CORRELATION_EXPIRED)
    return msgspec.json.decode(outcome[1], type=Correlation)
