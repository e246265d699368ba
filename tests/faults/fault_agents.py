"""Agents for the fault tests; each prints one line per event the test counts.

Lines (``harness.Tally`` reads them; times are ``time.time()``):

* ``A <message-id> <t>``    a send the server accepted (it answered with this id)
* ``R <t> <error>``         a send the server refused, or whose fate is unknown; sent again
* ``D <message-id> <t>``    a delivery handled successfully (printed before the handler
                            returns, so before its ack: a redelivery shows as a duplicate)
* ``N <message-id>``        a delivery the handler failed on purpose (a retryable nack)
* ``Q ok <t>``              a request that got its reply; ``Q failed <t> <error>`` otherwise
* ``Q late <t>``            a request meant to time out (its replier is slow on purpose) did
* ``done``                  the sender stopped (count reached or time up)

Each sender runs ``concurrency`` tasks, each sending one message at a time,
for ``seconds``, until ``count`` sends were accepted, or until the file
``stop_file`` exists, whichever comes first (``rate`` messages per second per
task at most, 0 = as fast as accepted).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import trio

from mas import Agent, AgentMessage, MasError, RequestTimeoutError


def _line(text: str) -> None:
    print(text, flush=True)


class Sender(Agent[dict[str, object]]):
    """Sends ``number`` messages to ``targets`` in turn (see the module docstring)."""

    def __init__(
        self,
        agent_id: str,
        *,
        targets: list[str],
        count: int = 0,
        seconds: float = 0.0,
        concurrency: int = 4,
        rate: float = 0.0,
        stop_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(agent_id, **kwargs)
        self.stop_file = Path(stop_file) if stop_file else None
        self.targets = targets
        self.count = count
        self.seconds = seconds
        self.concurrency = concurrency
        self.rate = rate
        self._numbers = itertools.count()
        self._accepted = 0

    def _more(self, until: float) -> bool:
        if self.count and self._accepted >= self.count:
            return False
        if self.stop_file is not None and self.stop_file.exists():
            return False
        return not (self.seconds and time.monotonic() >= until)

    async def _sender(self, until: float) -> None:
        while self._more(until):
            n = next(self._numbers)
            target = self.targets[n % len(self.targets)]
            began = trio.current_time()
            while self._more(until):
                try:
                    message_id = await self.send(target, "number", {"n": n})
                except MasError as exc:  # refused, or fate unknown: send it again
                    _line(f"R {time.time():.3f} {type(exc).__name__}: {exc}")
                    await trio.sleep(0.2)
                    continue
                self._accepted += 1
                _line(f"A {message_id} {time.time():.3f}")
                break
            if self.rate:
                await trio.sleep_until(began + 1 / self.rate)

    async def on_start(self) -> None:
        # Bounded: the tests give senders a count or a duration; this is the backstop.
        until = time.monotonic() + self.seconds
        with trio.fail_after((self.seconds or 1200) + 300):
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._sender, until)
        _line("done")
        self.stop_runtime()


class Recorder(Agent[dict[str, object]]):
    """Prints every delivery; fails the first delivery of one message in ``nack_every``."""

    def __init__(self, agent_id: str, *, nack_every: int = 0, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.nack_every = nack_every
        self._nacked: set[str] = set()

    @Agent.on("number")
    async def number(self, message: AgentMessage) -> None:
        n = int(message.data["n"])
        if self.nack_every and n % self.nack_every == 0 and message.message_id not in self._nacked:
            self._nacked.add(message.message_id)
            _line(f"N {message.message_id}")
            raise RuntimeError("a deliberate failure: this message is retried")
        _line(f"D {message.message_id} {time.time():.3f}")


class Requester(Agent[dict[str, object]]):
    """Sends requests to ``target``, ``rate`` per second per task, until ``until`` (epoch).

    One request in ``slow_every`` asks the replier to be slow and waits only
    ``slow_timeout``: its timeout is expected (``Q late``), and the reply comes late.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        target: str,
        until: float,
        concurrency: int = 2,
        rate: float = 5.0,
        timeout: float = 10.0,
        slow_every: int = 0,
        slow_timeout: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(agent_id, **kwargs)
        self.target = target
        self.until = until
        self.concurrency = concurrency
        self.rate = rate
        self.timeout = timeout
        self.slow_every = slow_every
        self.slow_timeout = slow_timeout

    async def _requester(self) -> None:
        for n in itertools.count():
            if time.time() >= self.until:
                return
            began = trio.current_time()
            slow = bool(self.slow_every) and n % self.slow_every == 0
            timeout = self.slow_timeout if slow else self.timeout
            try:
                reply = await self.request(
                    self.target, "ask", {"n": n, "slow": slow}, timeout=timeout
                )
            except RequestTimeoutError as exc:
                if slow:
                    _line(f"Q late {time.time():.3f}")
                else:
                    _line(f"Q failed {time.time():.3f} {type(exc).__name__}: {exc}")
                continue
            except MasError as exc:
                _line(f"Q failed {time.time():.3f} {type(exc).__name__}: {exc}")
                await trio.sleep(0.2)
                continue
            ok = reply.data.get("n") == n
            _line(f"Q {'ok' if ok else 'wrong'} {time.time():.3f}")
            await trio.sleep_until(began + 1 / self.rate)

    async def on_start(self) -> None:
        with trio.fail_after(max(0.0, self.until - time.time()) + 300):
            async with trio.open_nursery() as nursery:
                for _ in range(self.concurrency):
                    nursery.start_soon(self._requester)
        _line("done")
        self.stop_runtime()


class Replier(Agent[dict[str, object]]):
    """Answers every ``ask`` with its number; ``slow`` ones after ``slow_seconds``."""

    def __init__(self, agent_id: str, *, slow_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.slow_seconds = slow_seconds

    @Agent.on("ask")
    async def ask(self, message: AgentMessage) -> None:
        if message.data.get("slow"):
            await trio.sleep(self.slow_seconds)
        await message.reply("answer", {"n": message.data["n"]})
