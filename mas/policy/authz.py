"""Deny-by-default access control built from the ``permissions:`` section of ``mas.yaml``.

Pure: no Trio, no I/O. :meth:`AccessPolicy.from_config` turns the rules into sets once;
:meth:`AccessPolicy.allows` is then a few set lookups.

Semantics (``known`` is the set of agent ids listed under ``agents:``):

- Nothing is allowed unless a rule allows it. A sender or target that is not known is
  never allowed, whatever the rules say.
- ``allow``: ``sender`` -> each of ``targets``.
- ``allow_bidirectional``: every listed agent -> every other listed agent.
- ``allow_network``: with ``bidirectional: true`` (the default), as
  ``allow_bidirectional``; with ``false``, ``agents[i]`` -> ``agents[j]`` for ``i < j``
  only (the list order is the direction of traffic).
- ``allow_broadcast``: ``sender`` -> each of ``receivers``; without ``receivers``,
  ``sender`` -> every known agent except itself.
- ``allow_wildcard``: ``agent_id`` -> every known agent except itself.
- ``deny``: ``sender`` -> each of ``targets``, where ``"*"`` as the sender means every
  sender and ``"*"`` among the targets means every target. A deny always wins over
  any allow.
- No implicit self-delivery: an agent may send to itself only if an ``allow`` or
  ``allow_broadcast`` rule names it as its own target explicitly.
- RBAC (``gateway.features.rbac``): a role's ``send:<glob>`` permissions let each agent
  holding the role send to every known agent matching the glob (never itself). ACL and
  RBAC grants add up; a ``deny`` rule wins over both.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from mas.config import (
    WILDCARD,
    AllowBidirectionalRule,
    AllowBroadcastRule,
    AllowNetworkRule,
    AllowRule,
    AllowWildcardRule,
    DenyRule,
    MasConfig,
    Permission,
)

_NONE: Final[frozenset[str]] = frozenset()


class AccessPolicy:
    """An immutable ACL: which agent may send to which. Build it with :meth:`from_config`."""

    __slots__ = (
        "_allowed",
        "_by_sender",
        "_denied",
        "_deny_all",
        "_deny_from",
        "_deny_to",
        "_known",
        "_wildcard",
    )

    def __init__(
        self,
        *,
        known: frozenset[str],
        allowed: frozenset[tuple[str, str]],
        wildcard: frozenset[str],
        denied: frozenset[tuple[str, str]],
        deny_from: frozenset[str],
        deny_to: frozenset[str],
        deny_all: bool,
    ) -> None:
        self._known = known
        self._allowed = allowed  # explicit (sender, target) pairs, both known
        self._wildcard = wildcard  # senders allowed to reach every other known agent
        self._denied = denied  # explicit (sender, target) denials
        self._deny_from = deny_from  # senders denied everything (deny targets: ["*"])
        self._deny_to = deny_to  # targets nobody may reach (deny sender: "*")
        self._deny_all = deny_all  # deny sender "*" targets ["*"]
        by_sender: dict[str, set[str]] = {}
        for sender, target in allowed:
            by_sender.setdefault(sender, set()).add(target)
        self._by_sender = {s: frozenset(t) for s, t in by_sender.items()}

    @classmethod
    def for_config(cls, config: MasConfig) -> AccessPolicy:
        """The policy of a whole config: its permissions, plus RBAC roles when enabled."""
        grants: dict[str, list[str]] = {}
        if config.gateway.features.rbac:
            for agent in config.agents:
                for role in agent.roles:
                    grants.setdefault(agent.agent_id, []).extend(
                        p.removeprefix("send:") for p in config.roles[role].permissions
                    )
        return cls.from_config(config.permissions, config.agent_ids, role_grants=grants)

    @classmethod
    def from_config(
        cls,
        permissions: Sequence[Permission],
        agent_ids: Iterable[str],
        *,
        role_grants: Mapping[str, Sequence[str]] | None = None,
    ) -> AccessPolicy:
        """Build the policy from decoded permission rules and the allowlisted agent ids.

        Rules naming agents outside ``agent_ids`` grant nothing for those agents
        (the config loader already rejects such rules). ``role_grants`` maps a sender
        to the target globs its RBAC roles allow (``fnmatch`` syntax, case-sensitive);
        they add to the ACL, never to another agent's rights, and deny rules still win.
        """
        known = frozenset(agent_ids)
        allowed: set[tuple[str, str]] = set()
        for sender, patterns in (role_grants or {}).items():
            allowed.update(
                (sender, target)
                for target in known
                for pattern in patterns
                if target != sender and fnmatch.fnmatchcase(target, pattern)
            )
        wildcard: set[str] = set()
        denied: set[tuple[str, str]] = set()
        deny_from: set[str] = set()
        deny_to: set[str] = set()
        deny_all = False
        for rule in permissions:
            match rule:
                case AllowRule(sender=sender, targets=targets):
                    allowed.update((sender, t) for t in targets)
                case AllowBidirectionalRule(agents=agents):
                    allowed.update((a, b) for a in agents for b in agents if a != b)
                case AllowNetworkRule(agents=agents, bidirectional=True):
                    allowed.update((a, b) for a in agents for b in agents if a != b)
                case AllowNetworkRule(agents=agents):
                    allowed.update(
                        (a, b) for i, a in enumerate(agents) for b in agents[i + 1 :] if a != b
                    )
                case AllowBroadcastRule(sender=sender, receivers=None):
                    allowed.update((sender, t) for t in known if t != sender)
                case AllowBroadcastRule(sender=sender, receivers=receivers):
                    allowed.update((sender, t) for t in receivers or ())
                case AllowWildcardRule(agent_id=agent_id):
                    wildcard.add(agent_id)
                case DenyRule(sender=sender, targets=targets):
                    every_target = WILDCARD in targets
                    if sender == WILDCARD:
                        if every_target:
                            deny_all = True
                        deny_to.update(t for t in targets if t != WILDCARD)
                    elif every_target:
                        deny_from.add(sender)
                    else:
                        denied.update((sender, t) for t in targets)
        return cls(
            known=known,
            allowed=frozenset((s, t) for s, t in allowed if s in known and t in known),
            wildcard=frozenset(wildcard & known),
            denied=frozenset(denied),
            deny_from=frozenset(deny_from),
            deny_to=frozenset(deny_to),
            deny_all=deny_all,
        )

    def _is_denied(self, sender: str, target: str) -> bool:
        return (
            self._deny_all
            or sender in self._deny_from
            or target in self._deny_to
            or (sender, target) in self._denied
        )

    def allows(self, sender: str, target: str) -> bool:
        """True if ``sender`` may send to ``target``: allowed by a rule and denied by none."""
        if self._is_denied(sender, target):
            return False
        if (sender, target) in self._allowed:
            return True
        return sender in self._wildcard and target != sender and target in self._known

    def targets_of(self, sender: str) -> frozenset[str]:
        """Every known agent that ``sender`` may send to."""
        if sender in self._wildcard:
            candidates: Iterable[str] = self._known
        else:
            candidates = self._by_sender.get(sender, _NONE)
        return frozenset(t for t in candidates if self.allows(sender, t))
