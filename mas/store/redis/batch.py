"""Batches on Redis: ``enqueue_many`` and ``ack_many``, each one script call.

Enqueue
    One ``EVALSHA`` carries every item of the batch: the script checks each
    item's queue in item order (a later item sees what the earlier ones took),
    then appends the messages, their correlations and their audit records, and
    moves the chain's head, all atomically. Records are hashed in Python, so
    they must be linked before the script runs, and only the items that will be
    written may be linked (a refused item's record would leave a gap). So the
    caller sends a *prediction*, one flag per item:

    * ``1``: expected to fit (its record is linked and sent);
    * ``0``: expected refused: its queue refused lately (``RedisStore``'s
      ``_full``); no record is sent;
    * ``2``: refused, whatever the queue holds now (a retry's verdict).

    The script computes the outcome and writes only if it matches the
    prediction (and the chain's head is the record linked after: the
    compare-and-set of ``audit``). Otherwise it writes nothing and
    answers the outcome it found, with the chain's last record; the batch is
    linked again on that, refused items now flagged ``2``, and sent again. A
    retry only ever adds refusals, so it ends within one try per item; in
    practice a batch costs one round trip, two when a queue filled or drained
    unexpectedly, more only while other servers race for the chain (bounded by
    ``AUDIT_TIMEOUT``, as every audited write).

    A refused item is reported as refused by the last try that checked it: its
    queue was full then.

Ack
    One script acknowledges and deletes the entries of any number of streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec
import trio
from redis.exceptions import ResponseError

from ...audit.record import AuditRecord
from ..base import (
    CORRELATION_EXPIRED,
    STORE_NOT_DURABLE,
    UNKNOWN_CORRELATION,
    CorrelationRefused,
    Enqueued,
    EnqueueItem,
)
from .audit import AUDIT_TIMEOUT, RECORD_SIZE, TURN_WAIT, AuditChain, cut_off
from .client import (
    Arg,
    Command,
    Operation,
    RedisClient,
    StoreNotDurableError,
    StoreUnavailableError,
)
from .keys import Keys, queue_name
from .records import CORRELATION_GRACE_MS
from .scripts import make_script

# KEYS: waiting, audit chain, audit head, audit turn, servers, then each item's stream,
#       then the correlation key of each item that has one (in item order), then the key
#       of each correlation an item answers.
# ARGV: this server, max_length, channel, correlation grace ms, the hash the records were
#       linked after, the last record's hash, then per item: flag ('1' fits, '0' refused
#       unless it fits, '2' refused), q, message id, enqueued_at, envelope, correlation
#       target ('' for none), its expires_at, its JSON, the audit record (JSON; '' unless
#       flagged '1'), the KEYS index of the correlation it answers ('' for none).
# Returns {1, mask} written; {0, mask, head} the outcome differs from the flags; {-1 or -2,
# mask, head} the chain is not ready (see chain_ready). mask: per item, the outcome: '1'
# fits, '0' queue full, 'u' answers an unknown or used correlation, 'e' an expired one
# ('0' for an item flagged '2'); head: the chain's last record. Nothing is written unless
# the reply is 1.
_ENQUEUE_MANY: Final = """
local me, max_length = ARGV[1], tonumber(ARGV[2])
local n = (#ARGV - 6) / 10
local before, count, mask, differs, fitting, answered = {}, {}, {}, false, 0, {}
for i = 1, n do
  local a = 6 + (i - 1) * 10
  local flag, q, answers = ARGV[a + 1], ARGV[a + 2], ARGV[a + 10]
  local fits, why = false, '0'
  if flag ~= '2' then
    if answers ~= '' then
      answers = KEYS[tonumber(answers)]
      local x = redis.call('HGET', answers, 'x')
      if not x or answered[answers] then why = 'u'
      elseif tonumber(x) <= tonumber(ARGV[a + 4]) then why = 'e' end
    end
    if why == '0' then
      if not count[q] then
        count[q] = tonumber(redis.call('HGET', KEYS[1], q) or '0')
        before[q] = count[q]
      end
      fits = count[q] < max_length
      if fits then
        count[q] = count[q] + 1
        if answers ~= '' then answered[answers] = true end
      end
    end
  end
  if fits ~= (flag == '1') then differs = true end
  if fits then fitting = fitting + 1 end
  mask[i] = fits and '1' or why
end
mask = table.concat(mask)
if differs then return {0, mask, redis.call('LINDEX', KEYS[2], -1)} end
if fitting == 0 then return {1, mask} end
local ready = chain_ready(KEYS[3], KEYS[4], me, ARGV[5])
if ready < 0 then return {ready, mask, redis.call('LINDEX', KEYS[2], -1)} end

local now_ms, others, records, c = nil, nil, {}, 5 + n
for i = 1, n do
  local a = 6 + (i - 1) * 10
  local q, has_correlation = ARGV[a + 2], ARGV[a + 6] ~= ''
  if has_correlation then c = c + 1 end
  if string.sub(mask, i, i) == '1' then
    local stream = KEYS[5 + i]
    if before[q] then  -- the queue's first message of the batch
      -- Sessions that saw the queue non-empty keep claiming until it is empty: only a
      -- queue that was empty is announced, and only to other servers.
      if before[q] == 0 then
        if others == nil then others = redis.call('SCARD', KEYS[5]) > 1 end
        if others then redis.call('PUBLISH', ARGV[3], me .. ' ' .. q) end
      end
      add_waiting(KEYS[1], q, count[q] - before[q])
      before[q] = nil
    end
    append_entry(stream, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
    if has_correlation then  -- the hash records.find_correlations reads
      if not now_ms then
        local t = redis.call('TIME')
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local at_ms = math.max(math.floor(tonumber(ARGV[a + 7]) * 1000), now_ms)
      redis.call('HSET', KEYS[c], 't', ARGV[a + 6], 'x', ARGV[a + 7], 'j', ARGV[a + 8])
      redis.call('PEXPIREAT', KEYS[c], at_ms + tonumber(ARGV[4]))
    end
    if ARGV[a + 10] ~= '' then redis.call('DEL', KEYS[tonumber(ARGV[a + 10])]) end
    records[#records + 1] = ARGV[a + 9]
  end
end
for i = 1, #records, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(records, i, math.min(i + 999, #records)))
end
redis.call('SET', KEYS[3], ARGV[6] .. ' ' .. me)
return {1, mask}
"""

# KEYS: streams. ARGV: per stream, the number of its entries, then (entry id, consumer)
# pairs. Only entries still pending for their consumer are acked: after a reclaim, the
# entry belongs to another server, which is delivering it now. An emptied stream is kept
# (the next enqueue appends to it in one command); the release of the session deletes it.
_ACK_MANY: Final = """
local a = 1
for _, stream in ipairs(KEYS) do
  local last = a + 2 * tonumber(ARGV[a])
  local owned = owned_entries(stream, ARGV, a + 1, last)
  for i = 1, #owned, 1000 do forget(stream, {unpack(owned, i, math.min(i + 999, #owned))}) end
  a = last + 1
end
return 1
"""

# A mask letter of a reply whose correlation is gone -> its refusal reason.
_REFUSALS: Final = {ord("u"): UNKNOWN_CORRELATION, ord("e"): CORRELATION_EXPIRED}

ENQUEUE_MANY: Final = make_script("enqueue_many", _ENQUEUE_MANY)
ACK_MANY: Final = make_script("ack_many", _ACK_MANY)
SCRIPTS: Final = (ENQUEUE_MANY, ACK_MANY)


class EnqueueBatch:
    """One ``enqueue_many``: its items as script arguments, and the tries to write them."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        chain: AuditChain,
        server_id: str,
        max_length: int,
        items: Sequence[EnqueueItem],
    ) -> None:
        self._client = client
        self._chain = chain
        self._items = items
        self.queues = [queue_name(i.message.target_id, i.message.instance_id) for i in items]
        streams = [keys.queue(q) for q in self.queues]
        correlations = [
            keys.correlation(i.correlation.correlation_id) for i in items if i.correlation
        ]
        script_keys = [keys.waiting, *chain.keys, keys.servers, *streams, *correlations]
        # Lua's KEYS index of the correlation each item answers ("" for none).
        self._answers: list[Arg] = []
        for item in items:
            if item.answers:
                script_keys.append(keys.correlation(item.answers))
                self._answers.append(len(script_keys))
            else:
                self._answers.append("")
        self._head: Command = (
            "EVALSHA",
            ENQUEUE_MANY.sha,
            len(script_keys),
            *script_keys,
            server_id,
            max_length,
            keys.wake_channel,
            CORRELATION_GRACE_MS,
        )
        self._item_args = [_item_args(q, item) for q, item in zip(self.queues, items, strict=True)]
        self._size = sum(len(i.message.envelope_json) + RECORD_SIZE for i in items)
        # Whether ``along`` ran before the try that wrote the batch (the first try found
        # a queue it predicted wrong, or no turn of the chain): then it did not see it.
        self.along_ran_early = False

    async def write(self, full: Sequence[bool], along: Sequence[Operation] = ()) -> list[Enqueued]:
        """Write the batch; ``full[i]``: item i's queue refused lately (the prediction).

        ``along`` goes in the first try's pipeline, right after it (see the client).

        Result i is item i's record, None when its queue was full, or the
        ``CorrelationRefused`` of a reply whose correlation is no longer open, or
        (``store_not_durable``) of an item written but not acknowledged as the client's
        ``AcceptWait`` asks. Raises ``StoreUnavailableError`` when it is not written
        within ``AUDIT_TIMEOUT`` (``cut_off`` says whether the chain gave no turn or
        Redis did not answer), ValueError when a draft cannot be linked.
        """
        flags = [b"0" if f else b"1" for f in full]
        refusals: dict[int, CorrelationRefused] = {}
        contended = under_way = False
        with trio.move_on_after(AUDIT_TIMEOUT):
            while True:
                attempt = _Attempt(self, flags)
                not_durable = False
                try:
                    under_way = True
                    [outcome] = await self._client.call_prepared(
                        "enqueue", attempt, self._size, along=along
                    )
                except StoreNotDurableError as exc:
                    [outcome], not_durable = exc.replies, True
                    if isinstance(outcome, ResponseError):
                        raise StoreUnavailableError(f"enqueue refused: {outcome}") from exc
                under_way = False
                code, mask = outcome[0], outcome[1]
                for i, why in enumerate(mask):
                    if why in _REFUSALS:
                        refusals[i] = CorrelationRefused(_REFUSALS[why])
                if code == 1:
                    results = attempt.results()
                    if not_durable:  # written (and linked in the chain), not acknowledged
                        refused = CorrelationRefused(STORE_NOT_DURABLE)
                        return [
                            refusals.get(i) if r is None else refused for i, r in enumerate(results)
                        ]
                    return [refusals.get(i, r) if r is None else r for i, r in enumerate(results)]
                # What the script found: refused items stay refused from now on.
                flags = [b"1" if fits == ord("1") else b"2" for fits in mask]
                if along:
                    self.along_ran_early = True
                along = ()
                contended = contended or code < 0  # 0: the queues, not the chain, moved
                if code == -2:
                    await trio.sleep(TURN_WAIT)
        raise cut_off(contended, under_way)


def _item_args(q: str, item: EnqueueItem) -> tuple[Arg, ...]:
    """ARGV of one item, but its flag and record: q, message, correlation."""
    message, correlation = item.message, item.correlation
    head: tuple[Arg, ...] = (
        q,
        message.message_id,
        repr(message.enqueued_at),
        message.envelope_json,
    )
    if correlation is None:
        return (*head, "", "", "")
    return (
        *head,
        correlation.target_id,
        repr(correlation.expires_at),
        msgspec.json.encode(correlation),
    )


class _Attempt:
    """One try of an ``EnqueueBatch``, linked when its pipeline is sent (``Prepared``)."""

    def __init__(self, batch: EnqueueBatch, flags: list[bytes]) -> None:
        self._batch = batch
        self._flags = flags
        self._records: list[AuditRecord] = []

    def commands(self) -> Sequence[Command]:
        batch, flags = self._batch, self._flags
        drafts = [i.audit for i, flag in zip(batch._items, flags, strict=True) if flag == b"1"]
        after, self._records = batch._chain.link_next(drafts)
        last = self._records[-1].hash if self._records else after
        records = iter(self._records)
        args: list[Arg] = [after, last]
        for flag, item_args, answers in zip(flags, batch._item_args, batch._answers, strict=True):
            record = msgspec.json.encode(next(records)) if flag == b"1" else b""
            args += [flag, *item_args, record, answers]
        return [(*batch._head, *args)]

    def completed(self, replies: list[Any]) -> None:
        [outcome] = replies
        if isinstance(outcome, ResponseError):
            return  # the next write finds out where the chain is
        if outcome[0] != 1:
            self._batch._chain.moved_on(outcome[2])

    def failed(self, error: Exception) -> None:
        pass  # not written, or not known to be: the next write finds out where the chain is

    def results(self) -> list[AuditRecord | None]:
        records = iter(self._records)
        return [next(records) if flag == b"1" else None for flag in self._flags]


def ack_command(entries: dict[str, list[tuple[bytes, str]]]) -> Command:
    """The ``ACK_MANY`` call for these (entry id, consumer) pairs of these streams."""
    args: list[Arg] = []
    for pairs in entries.values():
        args.append(len(pairs))
        for entry_id, consumer in pairs:
            args += [entry_id, consumer]
    return ("EVALSHA", ACK_MANY.sha, len(entries), *entries, *args)
