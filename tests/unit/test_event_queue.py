"""A stream's ``EventQueue``: what its inline handler takes, and the order of the rest.

The handler (``_purerpc.handle_inline``) takes an event in the producer's task only while
the consumer waits with nothing queued before it; anything it declines, and everything
that arrives while the consumer is busy, is queued and received in order.
"""

from __future__ import annotations

import trio
import trio.testing

from mas._purerpc import EventQueue


async def test_the_handler_takes_events_only_while_the_consumer_waits_on_an_empty_queue() -> None:
    queue = EventQueue()
    taken: list[str] = []

    def take(event: str) -> bool:
        if not event.startswith("take"):
            return False
        taken.append(event)
        return True

    queue.inline = take
    received: list[str] = []

    queue.send_nowait("take: nobody waits yet")  # queued: the consumer is not waiting
    async with trio.open_nursery() as nursery:

        async def consumer() -> None:
            while True:
                received.append(await queue.receive())

        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert received == ["take: nobody waits yet"] and taken == []

        queue.send_nowait("take 1")  # the consumer waits, nothing queued: taken inline
        queue.send_nowait("keep 2")  # declined: queued, the consumer is woken
        queue.send_nowait("take 3")  # queued behind "keep 2", to keep the order
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["take 1"]
        assert received == ["take: nobody waits yet", "keep 2", "take 3"]

        queue.inline = None  # removed: everything is queued again
        queue.send_nowait("take 4")
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["take 1"] and received[-1] == "take 4"
        nursery.cancel_scope.cancel()
