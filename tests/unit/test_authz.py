"""The deny-by-default ACL built from ``permissions:``."""

from __future__ import annotations

from collections.abc import Sequence

from mas.config import (
    AllowBidirectionalRule,
    AllowBroadcastRule,
    AllowNetworkRule,
    AllowRule,
    AllowWildcardRule,
    DenyRule,
    Permission,
)
from mas.policy.authz import AccessPolicy

AGENTS = ("a", "b", "c", "d")


def policy(*rules: Permission, agents: Sequence[str] = AGENTS) -> AccessPolicy:
    return AccessPolicy.from_config(list(rules), agents)


def allowed_pairs(p: AccessPolicy, agents: Sequence[str] = AGENTS) -> set[tuple[str, str]]:
    return {(s, t) for s in agents for t in agents if p.allows(s, t)}


def test_no_rules_allow_nothing() -> None:
    p = policy()
    assert allowed_pairs(p) == set()
    assert p.targets_of("a") == frozenset()


def test_allow_rule_is_one_way() -> None:
    p = policy(AllowRule(sender="a", targets=["b", "c"]))
    assert allowed_pairs(p) == {("a", "b"), ("a", "c")}
    assert not p.allows("b", "a")
    assert p.targets_of("a") == {"b", "c"}


def test_allow_rule_may_name_the_sender_as_its_own_target() -> None:
    p = policy(AllowRule(sender="a", targets=["a"]))
    assert p.allows("a", "a")
    assert allowed_pairs(p) == {("a", "a")}


def test_allow_bidirectional_allows_both_ways_between_listed_agents() -> None:
    p = policy(AllowBidirectionalRule(agents=["a", "b", "c"]))
    assert allowed_pairs(p) == {
        ("a", "b"),
        ("b", "a"),
        ("a", "c"),
        ("c", "a"),
        ("b", "c"),
        ("c", "b"),
    }
    assert not p.allows("a", "d")
    assert not p.allows("d", "a")


def test_allow_network_bidirectional_allows_every_pair() -> None:
    p = policy(AllowNetworkRule(agents=["a", "b", "c"]))
    assert allowed_pairs(p) == allowed_pairs(policy(AllowBidirectionalRule(agents=["a", "b", "c"])))


def test_one_way_network_follows_list_order() -> None:
    p = policy(AllowNetworkRule(agents=["c", "a", "b"], bidirectional=False))
    assert allowed_pairs(p) == {("c", "a"), ("c", "b"), ("a", "b")}
    assert not p.allows("b", "c")
    assert not p.allows("a", "c")


def test_broadcast_without_receivers_reaches_every_other_agent() -> None:
    p = policy(AllowBroadcastRule(sender="a"))
    assert p.targets_of("a") == {"b", "c", "d"}
    assert not p.allows("a", "a")
    assert not p.allows("b", "a")


def test_broadcast_with_receivers_reaches_only_them() -> None:
    p = policy(AllowBroadcastRule(sender="a", receivers=["b", "c"]))
    assert allowed_pairs(p) == {("a", "b"), ("a", "c")}
    assert not p.allows("a", "d")


def test_wildcard_sender_reaches_every_known_agent_but_itself() -> None:
    p = policy(AllowWildcardRule(agent_id="a"))
    assert p.targets_of("a") == {"b", "c", "d"}
    assert not p.allows("a", "a")
    assert not p.allows("a", "stranger")
    assert not p.allows("b", "a")


def test_deny_rule_wins_over_allow() -> None:
    p = policy(
        AllowBidirectionalRule(agents=["a", "b"]),
        AllowWildcardRule(agent_id="c"),
        DenyRule(sender="a", targets=["b"]),
        DenyRule(sender="c", targets=["d"]),
    )
    assert not p.allows("a", "b")
    assert p.allows("b", "a")
    assert not p.allows("c", "d")
    assert p.targets_of("c") == {"a", "b"}
    assert p.targets_of("a") == frozenset()


def test_deny_wins_whatever_the_rule_order() -> None:
    p = policy(DenyRule(sender="a", targets=["b"]), AllowRule(sender="a", targets=["b"]))
    assert not p.allows("a", "b")


def test_deny_with_wildcard_target_silences_a_sender() -> None:
    p = policy(AllowWildcardRule(agent_id="a"), DenyRule(sender="a", targets=["*"]))
    assert p.targets_of("a") == frozenset()


def test_deny_with_wildcard_sender_protects_a_target() -> None:
    p = policy(AllowNetworkRule(agents=["a", "b", "c"]), DenyRule(sender="*", targets=["c"]))
    assert allowed_pairs(p) == {("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")}


def test_deny_everything_blocks_every_pair() -> None:
    p = policy(AllowWildcardRule(agent_id="a"), DenyRule(sender="*", targets=["*"]))
    assert allowed_pairs(p) == set()


def test_unknown_agents_are_never_allowed() -> None:
    p = policy(
        AllowRule(sender="a", targets=["ghost"]),
        AllowRule(sender="ghost", targets=["a"]),
        AllowWildcardRule(agent_id="phantom"),
    )
    assert not p.allows("a", "ghost")
    assert not p.allows("ghost", "a")
    assert not p.allows("phantom", "a")
    assert p.targets_of("a") == frozenset()


def test_no_implicit_self_send_from_group_rules() -> None:
    p = policy(
        AllowBidirectionalRule(agents=["a", "b"]),
        AllowNetworkRule(agents=["c", "d"]),
        AllowBroadcastRule(sender="b"),
    )
    assert not any(p.allows(x, x) for x in AGENTS)


def test_targets_of_unknown_sender_is_empty() -> None:
    assert policy(AllowNetworkRule(agents=["a", "b"])).targets_of("zz") == frozenset()


def test_rbac_roles_grant_matching_targets_only_when_enabled() -> None:
    from pathlib import Path

    from mas.config import parse_config

    text = (
        "roles: {coordinator: {permissions: ['send:worker_*']}}\n"
        "agents: [{agent_id: boss, roles: [coordinator]}, {agent_id: worker_1},"
        " {agent_id: worker_2}, {agent_id: other}]\n"
        "permissions: [{type: deny, sender: boss, targets: [worker_2]}]\n"
    )
    enabled = parse_config(text + "gateway: {features: {rbac: true}}\n", base_dir=Path("/"), env={})
    policy = AccessPolicy.for_config(enabled)
    assert policy.allows("boss", "worker_1")
    assert not policy.allows("boss", "worker_2")  # deny wins over the role
    assert not policy.allows("boss", "other")
    assert not policy.allows("worker_1", "boss")
    disabled = parse_config(text, base_dir=Path("/"), env={})
    assert not AccessPolicy.for_config(disabled).allows("boss", "worker_1")
