"""The Redis store's Lua scripts (pure data: source text and SHA1 digests).

Each script runs atomically on the Redis server, so every multi-key step of the
store (enqueue with its length check, claim, release, reclaim, retry, dead-letter,
single-use correlations, bounded state) is one ``EVALSHA`` in one round trip.
Key names follow the layout described in ``mas.store.redis``; scripts that must
find queues at run time (promoting due retries, reclaiming a dead server's
deliveries) derive queue keys from the namespace, so the store needs a single
Redis node (or a primary with replicas), not Redis Cluster.

Entries of a queue stream carry ``m`` (message id), ``t`` (enqueued_at) and
``e`` (the envelope). A stream's consumer group ``mas`` has one consumer per
session, named ``<server id>:<session id>``, plus ``~parked``, which owns entries
waiting for redelivery: listed in the queue's front list (``"<entry id>
<attempt> <not_before>"``) or in the delayed set (member ``"<entry id> <attempt>
<queue>"``, score ``not_before``). The pending entries list keeps each entry's
attempt as its delivery count.
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

GROUP: Final = "mas"  # the consumer group of every queue stream
MAX_DEAD_LETTERS: Final = 100_000  # per agent; older dead letters are trimmed beyond this
AUDIT_TURN_MS: Final = 200  # ms a server that lost a race for the audit chain writes first
PROMOTE_BATCH: Final = 1000  # due retries moved to their queue's front per call

_PRELUDE: Final = f"""
local GROUP = '{GROUP}'
local PARKED = '~parked'

local function queue_key(ns, q) return ns .. ':queue:' .. q end
local function front_key(ns, q) return ns .. ':front:' .. q end

-- Change a queue's count of waiting messages; a count of zero drops the field.
local function add_waiting(waiting, q, n)
  if n ~= 0 and redis.call('HINCRBY', waiting, q, n) <= 0 then
    redis.call('HDEL', waiting, q)
  end
end

-- The message id, enqueued_at and envelope of a stream entry's field list.
local function entry_fields(flat)
  local m, t, e
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k == 'm' then m = flat[i + 1]
    elseif k == 't' then t = flat[i + 1]
    elseif k == 'e' then e = flat[i + 1] end
  end
  return m, t, e
end

-- Append the whole message to its agent's dead-letter stream.
local function dead_letter(dlq, agents, cap, agent, instance, m, t, attempt, nb, e, reason, at)
  redis.call('XADD', dlq, 'MAXLEN', '~', cap, '*', 'm', m, 'a', agent, 'i', instance,
    't', t, 'n', attempt, 'b', nb, 'e', e, 'r', reason, 'd', at)
  redis.call('SADD', agents, agent)
end

-- Append an entry to a queue stream; a missing stream is made, with its group (one
-- command when the stream exists, as it does while any of its entries is in flight).
local function append_entry(stream, m, t, e)
  if not redis.call('XADD', stream, 'NOMKSTREAM', '*', 'm', m, 't', t, 'e', e) then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
    redis.call('XADD', stream, '*', 'm', m, 't', t, 'e', e)
  end
end

-- Acknowledge and delete entries: the stream keeps only what may be delivered again.
local function forget(stream, ids)
  redis.call('XACK', stream, GROUP, unpack(ids))
  redis.call('XDEL', stream, unpack(ids))
end

-- The entry ids of the (id, consumer) pairs in args[first..last] that are still
-- pending for that consumer (not reclaimed by another server meanwhile). A missing
-- stream (or group) makes XPENDING fail: then nothing is owned.
local function owned_entries(stream, args, first, last)
  local owned = {{}}
  for i = first, last, 2 do
    local p = redis.pcall('XPENDING', stream, GROUP, args[i], args[i], 1, args[i + 1])
    if p.err then return owned end
    if p[1] then owned[#owned + 1] = args[i] end
  end
  return owned
end

-- May `me` append records linked after `expected` to the audit chain? 1: yes. -1: no,
-- the chain moved on; if another server moved it, `me` takes the turn (unless a third
-- has it). -2: no, another server has the turn: it lost a race, so it writes first.
-- The head key holds "<last record's hash> <server that wrote it>".
local function chain_ready(head, turn, me, expected)
  local both = redis.call('MGET', turn, head)
  local holder, current = both[1], both[2]
  if holder and holder ~= me then return -2 end
  if (current and string.sub(current, 1, 64) or string.rep('0', 64)) ~= expected then
    if not holder and current and string.sub(current, 66) ~= me then
      redis.call('SET', turn, me, 'PX', {AUDIT_TURN_MS})
    end
    return -1
  end
  if holder then redis.call('DEL', turn) end
  return 1
end

local function drop_if_empty(stream)
  if redis.call('XLEN', stream) == 0 then redis.call('DEL', stream) end
end

local function split3(item)
  local a = string.find(item, ' ', 1, true)
  local b = string.find(item, ' ', a + 1, true)
  return string.sub(item, 1, a - 1), string.sub(item, a + 1, b - 1), string.sub(item, b + 1)
end

-- Move retries due by `now` to the front of their queues and announce them to every server.
-- The latest due is pushed first, so that the earliest due ends at the front (as on the
-- other stores); a call past PROMOTE_BATCH puts its later ones ahead of the earlier call's.
local function promote(delayed, waiting, ns, now, channel)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES',
    'LIMIT', 0, {PROMOTE_BATCH})
  for i = #due - 1, 1, -2 do
    local id, attempt, q = split3(due[i])
    redis.call('LPUSH', front_key(ns, q), id .. ' ' .. attempt .. ' ' .. due[i + 1])
    add_waiting(waiting, q, 1)
    redis.call('PUBLISH', channel, ' ' .. q)
    redis.call('ZREM', delayed, due[i])
  end
end

-- Return one consumer's pending entries of queue q to the front of the queue (in their
-- order), each as one more attempt, then delete the consumer. With `dl`, an entry that
-- has had `dl.max_attempts` attempts is dead-lettered instead. Returns how many went back.
local function hand_back(ns, waiting, q, consumer, nbs, dl)
  local stream = queue_key(ns, q)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local pending = redis.call('XPENDING', stream, GROUP, '-', '+', 1000000, consumer)
  local front = front_key(ns, q)
  local back = 0
  for i = #pending, 1, -1 do
    local id, count = pending[i][1], pending[i][4]
    local nb = nbs[q .. ' ' .. id] or '0'
    if dl and count >= dl.max_attempts then
      local entry = redis.call('XRANGE', stream, id, id)[1]
      if entry then
        local m, t, e = entry_fields(entry[2])
        dead_letter(dl.dlq, dl.agents, dl.cap, dl.agent, dl.instance, m, t, count, nb, e,
          'session_lost', dl.now)
      end
      forget(stream, {{id}})
    elseif #redis.call('XCLAIM', stream, GROUP, PARKED, 0, id, 'JUSTID') > 0 then
      redis.call('LPUSH', front, id .. ' ' .. (count + 1) .. ' ' .. nb)
      back = back + 1
    end
  end
  redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, consumer)
  add_waiting(waiting, q, back)
  drop_if_empty(stream)
  return back
end

local function has_consumer_of(stream, prefix)
  if redis.call('EXISTS', stream) == 0 then return false end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
    if string.sub(c[2], 1, #prefix) == prefix then return true end
  end
  return false
end

-- Hand back every delivery held by a server's sessions; announce the queues to everyone.
-- With max_attempts, one that has had them all is dead-lettered ('session_lost') instead.
local function reclaim(ns, waiting, channel, server, max_attempts, cap)
  local claims = ns .. ':claims:' .. server
  local prefix = server .. ':'
  local back = 0
  local dl = nil
  if max_attempts then
    local t = redis.call('TIME')
    dl = {{max_attempts = max_attempts, agents = ns .. ':dlq-agents', cap = cap,
      now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))}}
  end
  for _, q in ipairs(redis.call('SMEMBERS', claims)) do
    local stream = queue_key(ns, q)
    local n = 0
    if dl then
      local slash = string.find(q, '/', 1, true)
      dl.agent = slash and string.sub(q, 1, slash - 1) or q
      dl.instance = slash and string.sub(q, slash + 1) or ''
      dl.dlq = ns .. ':dlq:' .. dl.agent
    end
    if redis.call('EXISTS', stream) == 1 then
      for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
        if string.sub(c[2], 1, #prefix) == prefix then
          n = n + hand_back(ns, waiting, q, c[2], {{}}, dl)
        end
      end
    end
    if n > 0 then redis.call('PUBLISH', channel, ' ' .. q) end
    back = back + n
  end
  redis.call('DEL', claims)
  return back
end
"""

# KEYS: audit chain, audit head, audit turn. ARGV: this server, the hash the records were
# linked after, the last record's hash, the records (JSON). The chain is a list that only
# grows (record seq n at index n - 1).
# Returns {1} appended, {-1 or -2, head} not written: see chain_ready.
_APPEND_AUDIT: Final = """
local ready = chain_ready(KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if ready < 0 then return {ready, redis.call('LINDEX', KEYS[1], -1)} end
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('SET', KEYS[2], ARGV[3] .. ' ' .. ARGV[1])
return {1}
"""

# KEYS: reply stream, reply front, shared stream, shared front, waiting, delayed, dlq,
#       dlq agents, claims (this server).
# ARGV: consumer, limit, now, max_age, reply q, shared q, agent, instance, ns, channel,
#       dlq cap.
# Returns {which (1 reply, 2 shared), entry id, attempt, not_before, message id,
#          enqueued_at, envelope} per delivery.
_CLAIM: Final = """
local consumer, limit, now, max_age = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
promote(KEYS[6], KEYS[5], ARGV[9], ARGV[3], ARGV[10])
local out, taken = {}, 0

-- Deliver an entry, or dead-letter it when it is too old; true if it expired.
local function keep(stream, which, id, attempt, nb, flat, instance)
  local m, t, e = entry_fields(flat)
  if now - tonumber(t) > max_age then
    dead_letter(KEYS[7], KEYS[8], ARGV[11], ARGV[7], instance, m, t, attempt, nb, e,
      'expired', ARGV[3])
    forget(stream, {id})
    return true
  end
  taken = taken + 1
  out[taken] = {which, id, attempt, nb, m, t, e}
  return false
end

-- `waiting` (the queue's count in the waiting hash) is what its front list and its
-- undelivered entries hold together: a queue with none is not looked at.
local function take(stream, front, q, which, instance, waiting)
  waiting = tonumber(waiting or '0')
  if taken >= limit or waiting <= 0 then return end
  local before, removed, expired = taken, 0, false
  -- The front first, again while what it gave expired (dead-lettered, not taken).
  while taken < limit do
    local want = limit - taken
    local items = redis.call('LPOP', front, want)  -- false: the front is empty
    if not items then break end
    for _, item in ipairs(items) do
      removed = removed + 1
      local id, attempt, nb = split3(item)
      -- pcall: a stream deleted under us (by hand) claims nothing, rather than failing.
      local entry = redis.pcall('XCLAIM', stream, GROUP, consumer, 0, id, 'RETRYCOUNT', attempt)
      if not entry.err and entry[1] and entry[1][2] then
        expired = keep(stream, which, id, tonumber(attempt), nb, entry[1][2], instance) or expired
      end
    end
    if #items < want then break end  -- the front is empty now
  end
  -- New entries, unless the front held every waiting message.
  while taken < limit and removed < waiting do
    local want = limit - taken
    local got = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', want,
      'STREAMS', stream, '>')
    if not got or got.err then break end  -- none, or no stream
    local entries = got[1][2]
    removed = removed + #entries
    for _, entry in ipairs(entries) do
      expired = keep(stream, which, entry[1], 1, '0', entry[2], instance) or expired
    end
    if #entries < want then break end
  end
  -- As add_waiting, in one command: the count is known.
  if removed >= waiting then redis.call('HDEL', KEYS[5], q)
  elseif removed > 0 then redis.call('HINCRBY', KEYS[5], q, -removed) end
  if taken > before then redis.call('SADD', KEYS[9], q) end  -- for reclaims
  if expired then drop_if_empty(stream) end
end

local waiting = redis.call('HMGET', KEYS[5], ARGV[5], ARGV[6])
take(KEYS[1], KEYS[2], ARGV[5], 1, ARGV[8], waiting[1])
take(KEYS[3], KEYS[4], ARGV[6], 2, '', waiting[2])
return out
"""

# KEYS: reply stream, shared stream, dlq, dlq agents.
# ARGV: consumer, limit, now, max_age, agent, instance, dlq cap, then (which, entry id) per
# delivery the server tracks for the session. Returns, as CLAIM does, the entries pending
# under the consumer that the server does not track (a claim whose reply was lost took
# them), at most `limit`, each with its delivery count as its attempt; one older than
# max_age is dead-lettered ('expired'), as CLAIM does.
_RECOVER: Final = """
local consumer, limit, now, max_age = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local known = {}
for i = 8, #ARGV, 2 do known[ARGV[i] .. ' ' .. ARGV[i + 1]] = true end
local out = {}
for which, stream in ipairs({KEYS[1], KEYS[2]}) do
  local instance = which == 1 and ARGV[6] or ''
  local pending = redis.pcall('XPENDING', stream, GROUP, '-', '+', limit + (#ARGV - 7) / 2,
    consumer)
  if not pending.err then  -- no stream: nothing pending
    local expired = false
    for _, p in ipairs(pending) do
      if #out >= limit then break end
      if not known[which .. ' ' .. p[1]] then
        local entry = redis.call('XRANGE', stream, p[1], p[1])[1]
        if entry then
          local m, t, e = entry_fields(entry[2])
          if now - tonumber(t) > max_age then
            dead_letter(KEYS[3], KEYS[4], ARGV[7], ARGV[5], instance, m, t, p[4], '0', e,
              'expired', ARGV[3])
            forget(stream, {p[1]})
            expired = true
          else
            out[#out + 1] = {which, p[1], p[4], '0', m, t, e}
          end
        end
      end
    end
    if expired then drop_if_empty(stream) end
  end
end
return out
"""

# KEYS: stream, delayed. ARGV: entry id, consumer, next attempt, not_before, q.
_RETRY: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local p = redis.call('XPENDING', KEYS[1], GROUP, ARGV[1], ARGV[1], 1)[1]
if not p or p[2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], GROUP, PARKED, 0, ARGV[1], 'JUSTID')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
return 1
"""

# KEYS: stream, dlq, dlq agents.
# ARGV: entry id, dlq cap, agent, instance, message id, enqueued_at, attempt, not_before,
#       envelope, reason, dead_lettered_at, consumer.
# Returns 0 (nothing written) when the entry is no longer the consumer's (reclaimed).
_DEAD_LETTER: Final = """
if #owned_entries(KEYS[1], {ARGV[1], ARGV[12]}, 1, 2) == 0 then return 0 end
dead_letter(KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], ARGV[10], ARGV[11])
forget(KEYS[1], {ARGV[1]})
drop_if_empty(KEYS[1])
return 1
"""

# KEYS: waiting, dlq, dlq agents, claims (this server).
# ARGV: consumer, max_attempts, now, agent, instance, ns, channel, origin, dlq cap,
#       server prefix, then (q, entry id, not_before) for deliveries retried before.
_RELEASE: Final = """
local nbs = {}
for i = 11, #ARGV, 3 do nbs[ARGV[i] .. ' ' .. ARGV[i + 1]] = ARGV[i + 2] end
local dl = {max_attempts = tonumber(ARGV[2]), dlq = KEYS[2], agents = KEYS[3], cap = ARGV[9],
  agent = ARGV[4], now = ARGV[3]}
local back = 0
for _, spec in ipairs({{ARGV[4] .. '/' .. ARGV[5], ARGV[5]}, {ARGV[4], ''}}) do
  local q = spec[1]
  dl.instance = spec[2]
  local n = hand_back(ARGV[6], KEYS[1], q, ARGV[1], nbs, dl)
  if n > 0 then redis.call('PUBLISH', ARGV[7], ARGV[8] .. ' ' .. q) end
  if not has_consumer_of(queue_key(ARGV[6], q), ARGV[10]) then redis.call('SREM', KEYS[4], q) end
  back = back + n
end
return back
"""

# KEYS: lease (this server), servers, waiting.
# ARGV: mode, server id, lease ms, ns, channel, max attempts ('' for none), dlq cap.
# `join` hands back what an earlier process with this id left, then takes the lease;
# `beat` renews it and reclaims servers whose lease expired; `renew` only renews (the grace
# after an outage, see Lease.keep); `leave` hands back and quits.
# Returns {1 if the lease was still held, deliveries handed back}.
_LEASE: Final = """
local mode, me, ns = ARGV[1], ARGV[2], ARGV[4]
local max_attempts = tonumber(ARGV[6])
local back = 0
if mode == 'join' or mode == 'leave' then
  back = reclaim(ns, KEYS[3], ARGV[5], me, max_attempts, ARGV[7])
end
if mode == 'leave' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], me)
  return {0, back}
end
local held = redis.call('SET', KEYS[1], '1', 'PX', ARGV[3], 'GET') and 1 or 0
redis.call('SADD', KEYS[2], me)
-- A lease found expired is no evidence about the others (Redis may have been away, and
-- its downtime counts against every lease): renew only, reclaim at a later beat.
if mode == 'renew' or held == 0 then return {held, back} end
for _, other in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if other ~= me and redis.call('EXISTS', ns .. ':lease:' .. other) == 0 then
    back = back + reclaim(ns, KEYS[3], ARGV[5], other, max_attempts, ARGV[7])
    redis.call('SREM', KEYS[2], other)
  end
end
return {held, back}
"""

# KEYS: waiting, dlq (of one agent), dlq agents. ARGV: ns, now, channel, agent, then dlq
# entry ids. Each entry still there goes to the back of its queue as a new first attempt
# enqueued at `now` (whatever the queue's length). Returns the ids replayed.
_REPLAY: Final = """
local out = {}
for i = 5, #ARGV do
  local entry = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])[1]
  if entry then
    local f = {}
    for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
    local q = f['a']
    if f['i'] ~= '' then q = q .. '/' .. f['i'] end
    append_entry(queue_key(ARGV[1], q), f['m'], ARGV[2], f['e'])
    add_waiting(KEYS[1], q, 1)
    redis.call('PUBLISH', ARGV[3], ' ' .. q)
    redis.call('XDEL', KEYS[2], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
if redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[4])
end
return out
"""

# KEYS: delayed, waiting. ARGV: now, ns, channel. Returns the queues with waiting messages.
_PENDING: Final = """
promote(KEYS[1], KEYS[2], ARGV[2], ARGV[1], ARGV[3])
return redis.call('HKEYS', KEYS[2])
"""


class Script(NamedTuple):
    """A Lua script and the SHA1 digest ``EVALSHA`` names it by."""

    name: str
    source: str
    sha: str


def make_script(name: str, body: str, *, prelude: bool = True) -> Script:
    """A script from its body, after the shared helpers unless ``prelude`` is false."""
    source = (_PRELUDE if prelude else "") + body
    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    return Script(name, source, digest)


APPEND_AUDIT: Final = make_script("append_audit", _APPEND_AUDIT)
CLAIM: Final = make_script("claim", _CLAIM)
RECOVER: Final = make_script("recover", _RECOVER)
RETRY: Final = make_script("retry", _RETRY)
DEAD_LETTER: Final = make_script("dead_letter", _DEAD_LETTER)
RELEASE: Final = make_script("release", _RELEASE)
LEASE: Final = make_script("lease", _LEASE)
PENDING: Final = make_script("pending", _PENDING)
REPLAY: Final = make_script("replay", _REPLAY)

SCRIPTS: Final = (  # the queue and audit scripts (see also records.SCRIPTS)
    APPEND_AUDIT,
    CLAIM,
    RECOVER,
    RETRY,
    DEAD_LETTER,
    RELEASE,
    LEASE,
    PENDING,
    REPLAY,
)
