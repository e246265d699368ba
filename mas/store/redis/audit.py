"""The audit chain in Redis: one chain for every server sharing the store.

Records are linked in Python (Redis scripts have no SHA-256), by
``mas.audit.chain.link_many`` as in every store, and written by a script that
first checks the chain's head is still the record they were linked after: a
compare-and-set on ``ns:audit-head``, the last record's hash, in the same script
that writes the message, so neither exists without the other.

Linking happens in the lane's dispatcher, right before the batch is sent, after
the last record this server knows of; the replies update that view before the
next batch is linked. So a server's own writes never conflict, and operations
in one batch commit together in one round trip.

Servers racing for the chain take turns: a server whose write found the chain
moved on gets the chain's actual last record back and the *turn*
(``ns:audit-turn``, for ``AUDIT_TURN_MS``): until it writes, other servers'
audited writes wait, so its next batch cannot lose again. Without turns the
server that won a race is the first to send again and would keep winning.

The chain is the list ``ns:audit`` (record ``seq`` n at index n - 1 - a, JSON,
where a is the seq of the anchor ``ns:audit-anchor``, "<seq> <hash>" of the
last record retention trimmed; 0 before any trim). Reads and trims are scripts
that read the anchor with the list, so neither sees the other half done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import msgspec
import trio
from redis.exceptions import ResponseError

from ...audit.chain import key_id, link_many
from ...audit.record import GENESIS, AuditDraft, AuditRecord
from ...audit.retention import Retention, parse_anchor
from ...errors import ConfigError
from . import scripts as lua
from .client import Arg, Command, Operation, RedisClient, StoreUnavailableError

AUDIT_TIMEOUT: Final = 10.0  # seconds an audited write may take: its turns at the chain, Redis
TURN_WAIT: Final = 0.001  # seconds between tries while another server has the turn
RECORD_SIZE: Final = 1024  # bytes, an estimate of one record for batch sizing

_decoder: Final = msgspec.json.Decoder(AuditRecord)

# KEYS: the chain, its anchor. ARGV: first seq, last seq. Returns {anchor or nil, records}.
_READ_AUDIT: Final = """
local anchor = redis.call('GET', KEYS[2])
local offset = 0
if anchor then offset = tonumber(string.match(anchor, '^(%d+)')) end
local first = math.max(tonumber(ARGV[1]) - offset - 1, 0)
local last = tonumber(ARGV[2]) - offset - 1
if last < first then return {anchor, {}} end
return {anchor, redis.call('LRANGE', KEYS[1], first, last)}
"""

# KEYS: the chain, its anchor. ARGV: keep (-1: no bound), before ('': no bound),
# up to seq (-1: no bound), limit. Trims as mas.audit.retention.trim_cut; returns the count.
_TRIM_AUDIT: Final = """
local anchor = redis.call('GET', KEYS[2])
local offset = 0
if anchor then offset = tonumber(string.match(anchor, '^(%d+)')) end
local n = redis.call('LLEN', KEYS[1])
local limit = tonumber(ARGV[4])
local drop = 0
local keep = tonumber(ARGV[1])
if keep >= 0 then drop = n - keep end
if ARGV[2] ~= '' then
  local before = tonumber(ARGV[2])
  local items = redis.call('LRANGE', KEYS[1], 0, limit - 1)
  for i = 1, #items do
    if cjson.decode(items[i]).time >= before then break end
    if i > drop then drop = i end
  end
end
local up_to = tonumber(ARGV[3])
if up_to >= 0 then drop = math.min(drop, up_to - offset) end
drop = math.min(drop, n - 1, limit)
if drop <= 0 then return 0 end
local last = cjson.decode(redis.call('LINDEX', KEYS[1], drop - 1))
redis.call('LTRIM', KEYS[1], drop, -1)
redis.call('SET', KEYS[2], string.format('%d %s', last.seq, last.hash))
return drop
"""

READ_AUDIT: Final = lua.make_script("read_audit", _READ_AUDIT, prelude=False)
TRIM_AUDIT: Final = lua.make_script("trim_audit", _TRIM_AUDIT, prelude=False)
AUDIT_SCRIPTS: Final = (READ_AUDIT, TRIM_AUDIT)


def cut_off(contended: bool, under_way: bool) -> StoreUnavailableError:
    """The error of an audited write that ``AUDIT_TIMEOUT`` cut off.

    ``contended``: some try found the chain another server's (its turn, or a moved
    head), which writes nothing; ``under_way``: a try had been sent and not answered,
    so it may or may not have been applied.
    """
    unknown = "it may or may not have been applied (a retry may then duplicate it)"
    if not contended:
        return StoreUnavailableError(
            f"Redis did not answer an audited write within {AUDIT_TIMEOUT:g} s (is it up, "
            f"and reachable from this server?); {unknown}"
        )
    busy = f"audit chain: no turn to append within {AUDIT_TIMEOUT:g} s (other servers)"
    if under_way:
        return StoreUnavailableError(f"{busy}; the last try was cut off unanswered: {unknown}")
    return StoreUnavailableError(f"{busy}; nothing was written")


class AuditChain:
    """This server's end of the shared chain (linking, writing, reading)."""

    def __init__(
        self,
        client: RedisClient,
        keys: list[str],
        server_id: str,
        hmac_key: bytes | None,
        *,
        anchor_key: str,
    ) -> None:
        self._client = client
        self.keys = keys  # the chain, its head, its turn
        self._anchor_key = anchor_key
        self._server_id = server_id
        self._hmac_key = hmac_key
        self._last: AuditRecord | None = None  # the chain's last record, as far as we know

    def moved_on(self, head: bytes | None) -> None:
        """A write found the chain's last record to be ``head`` (JSON; None: empty chain)."""
        self._last = _decoder.decode(head) if head else None

    def link_next(self, drafts: Sequence[AuditDraft]) -> tuple[str, list[AuditRecord]]:
        """(the hash linked after, the records): ``drafts`` linked after the last record.

        For the dispatcher, right before it sends the write: the records become
        the last ones known, so the next write links after them. Raises
        ValueError (changing nothing) when a draft cannot be linked.
        """
        after = self._last.hash if self._last is not None else GENESIS
        records = link_many(self._last, drafts, self._hmac_key, self._server_id)
        if records:
            self._last = records[-1]
        return after, records

    async def load(self) -> None:
        """Take the chain's last record as the place to link after."""
        [head] = await self._client.call("audit", ("LINDEX", self.keys[0], -1))
        self.moved_on(head)

    async def check_key(self, key_id_key: str) -> None:
        """Make sure every server links with one key: the first one's id is kept in Redis.

        Raises ConfigError when this server's key is not the one the chain is
        keyed with (records linked with two keys would verify with neither).
        """
        ours = key_id(self._hmac_key)
        [_, theirs] = await self._client.call(
            "audit", ("SET", key_id_key, ours, "NX"), ("GET", key_id_key)
        )
        if theirs is not None and theirs.decode() != ours:
            raise ConfigError(
                "this server's audit HMAC key is not the one the audit chain in Redis is"
                f" keyed with (key id {theirs.decode()}, ours {ours}): give every server"
                " sharing the store the same key (copy the key file the first server made,"
                " or set gateway.audit.hmac_key_env on all of them)"
            )

    async def write(
        self,
        kind: str,
        script: lua.Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        drafts: Sequence[AuditDraft],
        *,
        before_each: Callable[[], Awaitable[None]] | None = None,
        ahead: Sequence[Operation] = (),
    ) -> tuple[list[Any], list[AuditRecord]]:
        """Run ``script`` with ``args`` plus the linked drafts; (its reply, the records).

        ``before_each`` is awaited before every attempt (it may raise to give up).
        ``ahead`` goes in the first attempt's pipeline, right before it (see the client).

        The script takes, after ``args``: the hash the records were linked after,
        the last record's hash, the records (JSON); it replies ``{1, ...}`` when
        it wrote them, ``{-1 or -2, head}`` when it may not (see the module
        docstring: retried here), or ``{code, head}`` when it refused them.
        """
        size = RECORD_SIZE * len(drafts) + sum(
            len(a) if isinstance(a, str | bytes) else 8 for a in args
        )
        contended = under_way = False
        try:
            with trio.move_on_after(AUDIT_TIMEOUT):
                while True:
                    if before_each is not None:
                        await before_each()
                    call = _Linking(self, script, keys, args, drafts)
                    sent, ahead = ahead, ()
                    under_way = True
                    [outcome] = await self._client.call_prepared(kind, call, size, ahead=sent)
                    under_way = False
                    if outcome[0] >= 0:
                        return outcome, call.records
                    contended = True
                    if outcome[0] == -2:
                        await trio.sleep(TURN_WAIT)
        finally:
            self._client.discard(ahead)  # given up before the first attempt: never sent
        raise cut_off(contended, under_way)

    async def append(
        self, drafts: Sequence[AuditDraft], ahead: Sequence[Operation] = ()
    ) -> list[AuditRecord]:
        """Link ``drafts`` into the chain and write them, in order, in one step.

        ``ahead`` goes in the same pipeline, before them (see ``write``).
        """
        if not drafts:
            return []
        _, records = await self.write(
            "audit", lua.APPEND_AUDIT, self.keys, [self._server_id], drafts, ahead=ahead
        )
        return records

    async def records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """Records with ``seq > after_seq``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        first = max(after_seq, 0) + 1
        keys = [self.keys[0], self._anchor_key]
        _, found = await self._client.evalsha("audit", READ_AUDIT, keys, [first, first + limit - 1])
        return [_decoder.decode(raw) for raw in found]

    async def trim(self, rule: Retention) -> int:
        """Trim the oldest records as ``rule`` allows; keeps the anchor (see the docstring)."""
        args: list[Arg] = [
            -1 if rule.keep is None else rule.keep,
            "" if rule.before is None else repr(rule.before),
            -1 if rule.up_to_seq is None else rule.up_to_seq,
            rule.limit,
        ]
        keys = [self.keys[0], self._anchor_key]
        return int(await self._client.evalsha("audit_trim", TRIM_AUDIT, keys, args))

    async def anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last record trimmed; (0, GENESIS) when none was."""
        [raw] = await self._client.call("audit", ("GET", self._anchor_key))
        return parse_anchor(raw)


class _Linking:
    """One script call whose drafts are linked when its batch is sent (``Prepared``)."""

    def __init__(
        self,
        chain: AuditChain,
        script: lua.Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        drafts: Sequence[AuditDraft],
    ) -> None:
        self._chain = chain
        self._command: Command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        self._drafts = drafts
        self.records: list[AuditRecord] = []

    def commands(self) -> Sequence[Command]:
        after, self.records = self._chain.link_next(self._drafts)
        encoded = [msgspec.json.encode(record) for record in self.records]
        return [(*self._command, after, self.records[-1].hash, *encoded)]

    def completed(self, replies: list[Any]) -> None:
        [outcome] = replies
        if isinstance(outcome, ResponseError):
            return  # the next write finds out where the chain is
        if outcome[0] != 1:
            self._chain.moved_on(outcome[1])

    def failed(self, error: Exception) -> None:
        pass  # not written, or not known to be: the next write finds out where the chain is
