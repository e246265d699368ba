"""Redis commands per message, end to end: a regression bound, below the seed system's.

Counted by ``tests/redis_commands.py`` from ``INFO commandstats`` (commands inside
scripts included) for a real server, two SDK agents and a real redis-server. The
seed system runs 59 per request/reply and 28 per one-way message, one at a time.
Ours, when these bounds were set: 58.0 and 25.8 one at a time, 15.9 and 7.5 with 32
in flight (79.1, 35.6, 21.3 and 10.7 before); on 2 December 51.0, 23.0, 13.6 and 5.1.
One at a time the count hardly varies; with 32 in flight it depends on how the batches
form, so those bounds are loose.

Round trips (the server's pipelines to Redis) one at a time: 4.0 per request/reply (the
request with its claim; the reply with its claim; the acks of the request and of the
reply, each with its DELIVERED record) and 1.35 per one-way message (7.5 and 2.8 before
a claim rode in its enqueue's pipeline and an ack in its records').
"""

from __future__ import annotations

import pytest
import trio
from redis_commands import commands_per_message
from redis_server import running_redis

from mas.testing import TestPKI

COUNT = 100  # messages counted

BOUNDS = {  # (kind, in flight) -> most commands per message
    ("request", 1): 58.5,  # the seed system: 59
    ("send", 1): 26.5,  # the seed system: 28
    ("request", 32): 26.0,  # batching varies with timing: a guard against gross regressions
    ("send", 32): 12.0,
}
ROUND_TRIPS = {"request": 4.2, "send": 2.0}  # most per message, one at a time


@pytest.mark.parametrize(("kind", "in_flight"), list(BOUNDS))
async def test_redis_commands_per_message_stay_below_the_bound(
    pki: TestPKI, kind: str, in_flight: int
) -> None:
    with running_redis() as server, trio.fail_after(120):
        calls: dict[str, int] = {}
        trips: list[float] = []
        per = await commands_per_message(pki, server.url, kind, COUNT, in_flight, calls, trips)
    spent = sorted(calls.items(), key=lambda kv: -kv[1])
    detail = ", ".join(f"{name} {n / COUNT:.2f}" for name, n in spent)
    assert per <= BOUNDS[kind, in_flight], f"{per:.1f} commands per {kind}: {detail}"
    if in_flight == 1:
        assert trips[0] <= ROUND_TRIPS[kind], f"{trips[0]:.2f} round trips per {kind}"
