"""The gateway: the policy pipeline run on every send, request and reply, before routing.

Order (DESIGN section 6): AuthN (done by the servicer, per connection) ->
AuthZ (ACL + RBAC; replies are authorized by the request they answer) ->
rate limit per sender (GCRA, per-minute and per-hour) -> circuit breaker per
target -> DLP on the structured payload -> route -> audit. Each step is a pure
filter from :mod:`mas.policy.pipeline` returning a decision value; this module
only holds their state, lists them in that order and runs them: ``admit``
returns the pipeline's ``Admitted`` or its ``Deny`` (reason, audit decision,
``retry_after``, violations), a value the router turns into the one
``Refusal``. A new filter is a class in :mod:`mas.policy.pipeline` and a
line in :meth:`Gateway._pipeline`.

State: rate-limit TATs and breaker states are kept in this server's memory.
With several servers sharing a Redis store each server enforces its own
limits (a sender spreading its traffic over N servers gets up to N times the
budget); sharing them through the store is future work.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from ..config import MasConfig
from ..policy.authz import AccessPolicy
from ..policy.breaker import BreakerBook, BreakerSettings
from ..policy.dlp import DlpScanner
from ..policy.pipeline import Admitted as Admitted
from ..policy.pipeline import Authorize, Breaker, Dlp, Filter, Message, RateLimit, run
from ..policy.pipeline import Deny as Deny
from ..policy.pipeline import Kind as Kind
from ..policy.ratelimit import MemoryRateLimiter, Window, windows_for

log = logging.getLogger("mas.gateway")

RATE_LIMIT_HINT: Final = (
    "raise gateway.rate_limit.per_minute / per_hour in mas.yaml (defaults 100 and 1000), "
    "or set this agent's own rate_limit under agents:"
)

DLP_BUDGET: Final = 0.2  # seconds of thread CPU time one payload's DLP scan may take


class Gateway:
    """Holds the policy of one configuration; swapped whole on reload (state is kept)."""

    def __init__(
        self,
        config: MasConfig,
        *,
        rates: MemoryRateLimiter | None = None,
        breakers: BreakerBook | None = None,
        rate_warned: set[str] | None = None,
    ) -> None:
        gateway = config.gateway
        self.access = AccessPolicy.for_config(config)
        self.agent_ids = config.agent_ids
        default_windows = windows_for(gateway.rate_limit)
        self._windows: dict[str, tuple[Window, ...]] = {
            agent.agent_id: windows_for(gateway.rate_limit, agent.rate_limit)
            for agent in config.agents
            if agent.rate_limit is not None
        }
        self._default_windows = default_windows
        self._rates = rates if rates is not None else MemoryRateLimiter()
        # Senders whose first rate-limit refusal was logged (allowlisted ids: bounded).
        self._rate_warned = rate_warned if rate_warned is not None else set()
        settings = BreakerSettings.from_config(gateway.circuit_breaker)
        self.breakers_enabled = gateway.features.circuit_breaker
        if breakers is None or breakers.settings != settings:
            breakers = BreakerBook(settings)
        self.breakers = breakers
        # The scan budget is CPU time of this thread, so a busy machine does not make a
        # large, clean message fail closed; 0.2 s covers a full-size (1 MiB) payload.
        self._dlp = (
            DlpScanner.from_config(gateway.dlp, budget=DLP_BUDGET, clock=time.thread_time)
            if gateway.features.dlp
            else None
        )
        self._filters = self._pipeline()

    def shown(self, text: str) -> str:
        """A client-chosen field (target id, message type, correlation id) as records show
        it: with what a DLP rule matches in it masked (as it is when DLP is off)."""
        return text if self._dlp is None or not text else self._dlp.shown(text)

    def reconfigured(self, config: MasConfig) -> Gateway:
        """The gateway of a new config, keeping rate-limit and breaker state."""
        return Gateway(
            config, rates=self._rates, breakers=self.breakers, rate_warned=self._rate_warned
        )

    def _windows_of(self, sender_id: str) -> tuple[Window, ...]:
        return self._windows.get(sender_id, self._default_windows)

    def _pipeline(self) -> tuple[Filter, ...]:
        """The pipeline, in its order (see the module docstring)."""
        filters: list[Filter] = [
            Authorize(self.access, self.agent_ids),
            RateLimit(self._rates, self._windows_of),
        ]
        if self.breakers_enabled:
            filters.append(Breaker(self.breakers))
        if self._dlp is not None:
            filters.append(Dlp(self._dlp))
        return tuple(filters)

    def admit(
        self,
        kind: Kind,
        sender_id: str,
        target_id: str,
        message_type: str,
        data: dict[str, Any],
        now: float,
    ) -> Admitted | Deny:
        """Run AuthZ, rate limit, breaker and DLP: the admitted message, or the first ``Deny``."""
        outcome = run(self._filters, Message(kind, sender_id, target_id, message_type, data), now)
        if isinstance(outcome, Deny) and outcome.decision == "RATE_LIMITED":
            self._warn_rate_limited(sender_id)
        return outcome

    def _warn_rate_limited(self, sender_id: str) -> None:
        if sender_id in self._rate_warned:
            return
        self._rate_warned.add(sender_id)
        minute, hour = (window.limit for window in self._windows_of(sender_id))
        log.warning(
            "agent %r is over its rate limit (%d per minute, %d per hour): its "
            "messages are refused with RESOURCE_EXHAUSTED rate_limited; if this "
            "traffic is expected, %s (logged once per agent)",
            sender_id,
            minute,
            hour,
            RATE_LIMIT_HINT,
        )

    def delivery_succeeded(self, target_id: str, now: float) -> None:
        """A delivery to ``target_id`` was acked."""
        if self.breakers_enabled:
            self.breakers.record_success(target_id, now)

    def delivery_failed(self, target_id: str, now: float) -> None:
        """A delivery to ``target_id`` was nacked, timed out, or its handler failed."""
        if self.breakers_enabled:
            self.breakers.record_failure(target_id, now)
