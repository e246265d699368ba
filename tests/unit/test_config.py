"""mas.yaml decoding, validation, path resolution, environment overrides and discovery."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from mas.config import (
    CONFIG_ENV_VAR,
    CONFIG_FILE_NAME,
    AgentSpec,
    AllowBidirectionalRule,
    AllowBroadcastRule,
    AllowNetworkRule,
    AllowRule,
    AllowWildcardRule,
    DenyRule,
    GatewayConfig,
    LimitsConfig,
    MasConfig,
    check_config,
    find_config_file,
    load_config,
    parse_config,
)
from mas.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

SEED_YAML = r"""
server_listen_addr: 127.0.0.1:50051
tls_ca_path: certs/ca.pem
tls_server_cert_path: certs/server.pem
tls_server_key_path: certs/server.key
gateway:
  redis: {url: redis://localhost:6379, decode_responses: true, socket_timeout: null}
  rate_limit: {per_minute: 100, per_hour: 1000}
  features: {dlp: true, rbac: false, circuit_breaker: true}
  dlp:
    merge_strategy: append
    disable_defaults: []
    policy_overrides: {email: redact}
    rules:
      - {id: internal_account_id, type: internal_account_id, pattern: "\\bACCT-[A-Z0-9]{10}\\b",
         action: block, severity: high, description: Internal account IDs, enabled: true,
         case_insensitive: false}
  audit: {file_path: audit.log, max_bytes: 10000000, backup_count: 5}
  telemetry: {enabled: false, service_name: mas-framework, service_namespace: mas,
              environment: dev, otlp_endpoint: null, sample_ratio: 1.0, export_metrics: true,
              metrics_export_interval_ms: 60000, headers: {}}
  circuit_breaker: {failure_threshold: 5, success_threshold: 2, timeout_seconds: 60,
                    window_seconds: 300}
permissions:
  - {type: allow_bidirectional, agents: [agent_a, agent_b]}
agents:
  - {agent_id: agent_a, class_path: "my_app.agents:AgentA", instances: 1, capabilities: [sender],
     metadata: {}, tls_cert_path: certs/agent_a.pem, tls_key_path: certs/agent_a.key,
     init_kwargs: {}}
  - {agent_id: agent_b, class_path: "my_app.agents:AgentB", instances: 2, capabilities: [worker],
     metadata: {}, tls_cert_path: certs/agent_b.pem, tls_key_path: certs/agent_b.key,
     init_kwargs: {}}
"""

TWO_AGENTS = "agents: [{agent_id: a}, {agent_id: b}]\n"


def parse(text: str, *, env: dict[str, str] | None = None, base: Path | None = None) -> MasConfig:
    return parse_config(text, base_dir=base or Path("/base"), env=env or {}, cwd=Path("/cwd"))


def parse_error(text: str, *, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env=env)
    return str(info.value)


# --- the seed file and defaults ----------------------------------------------------------


def test_seed_config_loads_with_every_value_as_written(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text(SEED_YAML)
    loaded = load_config(tmp_path, env={})
    cfg = loaded.config
    assert loaded.path == tmp_path / CONFIG_FILE_NAME
    assert loaded.base_dir == tmp_path
    assert cfg.server_listen_addr == "127.0.0.1:50051"
    assert cfg.listen_host == "127.0.0.1"
    assert cfg.listen_port == 50051
    assert cfg.tls_ca_path == str(tmp_path / "certs/ca.pem")
    assert cfg.tls_server_cert_path == str(tmp_path / "certs/server.pem")
    assert cfg.tls_server_key_path == str(tmp_path / "certs/server.key")
    assert cfg.tls_configured
    gw = cfg.gateway
    assert gw.redis.url == "redis://localhost:6379"
    assert gw.redis.decode_responses is True
    assert gw.redis.socket_timeout is None
    assert (gw.rate_limit.per_minute, gw.rate_limit.per_hour) == (100, 1000)
    assert (gw.features.dlp, gw.features.rbac, gw.features.circuit_breaker) == (True, False, True)
    assert gw.dlp.merge_strategy == "append"
    assert gw.dlp.disable_defaults == []
    assert gw.dlp.policy_overrides == {"email": "redact"}
    (rule,) = gw.dlp.rules
    assert rule.id == "internal_account_id"
    assert rule.type == "internal_account_id"
    assert rule.pattern == r"\bACCT-[A-Z0-9]{10}\b"
    assert re.search(rule.pattern, "see ACCT-ABCDE12345 now")
    assert (rule.action, rule.severity, rule.description) == (
        "block",
        "high",
        "Internal account IDs",
    )
    assert rule.enabled is True
    assert rule.case_insensitive is False
    assert gw.audit.file_path == str(tmp_path / "audit.log")
    assert (gw.audit.max_bytes, gw.audit.backup_count) == (10_000_000, 5)
    tel = gw.telemetry
    assert tel.enabled is False
    assert (tel.service_name, tel.service_namespace, tel.environment) == (
        "mas-framework",
        "mas",
        "dev",
    )
    assert tel.otlp_endpoint is None
    assert tel.sample_ratio == 1.0
    assert tel.export_metrics is True
    assert tel.metrics_export_interval_ms == 60000
    assert tel.headers == {}
    cb = gw.circuit_breaker
    assert (cb.failure_threshold, cb.success_threshold) == (5, 2)
    assert (cb.timeout_seconds, cb.window_seconds) == (60.0, 300.0)
    assert cfg.permissions == [AllowBidirectionalRule(agents=["agent_a", "agent_b"])]
    assert cfg.agent_ids == frozenset({"agent_a", "agent_b"})
    a, b = cfg.agents
    assert a == AgentSpec(
        agent_id="agent_a",
        class_path="my_app.agents:AgentA",
        instances=1,
        capabilities=["sender"],
        metadata={},
        tls_cert_path=str(tmp_path / "certs/agent_a.pem"),
        tls_key_path=str(tmp_path / "certs/agent_a.key"),
        init_kwargs={},
    )
    assert b.class_path == "my_app.agents:AgentB"
    assert b.instances == 2
    assert b.capabilities == ["worker"]
    assert b.tls_cert_path == str(tmp_path / "certs/agent_b.pem")
    assert cfg.agent("agent_b") is b
    assert cfg.agent("nobody") is None


def test_empty_file_is_the_default_config() -> None:
    cfg = parse("")
    assert cfg == MasConfig()
    assert cfg.listen_host == "127.0.0.1"
    assert cfg.listen_port == 50051
    assert cfg.trust_domain == "mas"
    assert cfg.store.backend == "sqlite"  # the embedded, durable default
    assert cfg.limits == LimitsConfig()
    assert cfg.limits.max_message_bytes == 1_048_576
    assert cfg.limits.shutdown_grace == 10.0
    assert cfg.gateway == GatewayConfig()
    assert cfg.gateway.rate_limit.per_minute == 100
    assert cfg.permissions == []
    assert cfg.agents == []
    assert not cfg.tls_configured


def test_comment_only_file_is_the_default_config() -> None:
    assert parse("# nothing here\n") == MasConfig()


def test_agent_defaults() -> None:
    (agent,) = parse("agents: [{agent_id: solo}]").agents
    assert agent.class_path is None
    assert agent.instances == 1
    assert agent.capabilities == []
    assert agent.metadata == {}
    assert agent.init_kwargs == {}
    assert agent.tls_cert_path is None
    assert agent.restart.max_restarts == 5
    assert agent.restart.backoff_max == 10.0


def test_ipv6_listen_address_is_unbracketed() -> None:
    cfg = parse("server_listen_addr: '[::1]:0'")
    assert cfg.listen_host == "::1"
    assert cfg.listen_port == 0


def test_every_permission_type_decodes() -> None:
    cfg = parse(
        "agents: [{agent_id: a}, {agent_id: b}, {agent_id: c}]\n"
        "permissions:\n"
        "  - {type: allow, sender: a, targets: [b]}\n"
        "  - {type: allow_bidirectional, agents: [a, b]}\n"
        "  - {type: allow_network, agents: [a, b, c], bidirectional: false}\n"
        "  - {type: allow_broadcast, sender: c}\n"
        "  - {type: allow_wildcard, agent_id: a}\n"
        "  - {type: deny, sender: '*', targets: [c]}\n"
    )
    assert cfg.permissions == [
        AllowRule(sender="a", targets=["b"]),
        AllowBidirectionalRule(agents=["a", "b"]),
        AllowNetworkRule(agents=["a", "b", "c"], bidirectional=False),
        AllowBroadcastRule(sender="c", receivers=None),
        AllowWildcardRule(agent_id="a"),
        DenyRule(sender="*", targets=["c"]),
    ]


# --- errors name the path ----------------------------------------------------------------


def test_unknown_top_level_key_is_an_error_naming_it() -> None:
    message = parse_error("server_listen_adr: 127.0.0.1:1")
    assert "unknown field `server_listen_adr`" in message
    assert "`$`" in message


def test_unknown_nested_key_names_its_path() -> None:
    message = parse_error("gateway: {rate_limit: {per_minut: 5}}")
    assert "unknown field `per_minut`" in message
    assert "$.gateway.rate_limit" in message


def test_unknown_agent_key_names_the_agent_index() -> None:
    assert "$.agents[1]" in parse_error("agents: [{agent_id: a}, {agent_id: b, instance: 2}]")


def test_zero_instances_is_an_error_naming_the_path() -> None:
    message = parse_error("agents: [{agent_id: a}, {agent_id: b, instances: 0}]")
    assert "$.agents[1].instances" in message


@pytest.mark.parametrize("agent_id", ["has space", "", "x" * 65, "dot.ted", "slash/y"])
def test_agent_id_that_cannot_be_a_spiffe_segment_is_refused(agent_id: str) -> None:
    message = parse_error(f"agents: [{{agent_id: {agent_id!r}}}]")
    assert "$.agents[0].agent_id" in message


def test_duplicate_agent_id_is_refused() -> None:
    message = parse_error("agents: [{agent_id: a}, {agent_id: b}, {agent_id: a}]")
    assert "$.agents[2].agent_id" in message
    assert "duplicate" in message


def test_permission_naming_an_unknown_agent_names_its_path() -> None:
    message = parse_error(TWO_AGENTS + "permissions: [{type: allow, sender: a, targets: [b, z]}]")
    assert "$.permissions[0].targets[1]" in message
    assert "'z'" in message


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("{type: allow, sender: z, targets: [a]}", "$.permissions[0].sender"),
        ("{type: allow_bidirectional, agents: [a, z]}", "$.permissions[0].agents[1]"),
        ("{type: allow_network, agents: [z, a]}", "$.permissions[0].agents[0]"),
        ("{type: allow_broadcast, sender: a, receivers: [b, z]}", "$.permissions[0].receivers[1]"),
        ("{type: allow_wildcard, agent_id: z}", "$.permissions[0].agent_id"),
        ("{type: deny, sender: a, targets: [z]}", "$.permissions[0].targets[0]"),
    ],
)
def test_every_rule_type_is_checked_for_unknown_agents(rule: str, path: str) -> None:
    assert path in parse_error(TWO_AGENTS + f"permissions: [{rule}]")


def test_star_is_accepted_only_in_deny_rules() -> None:
    cfg = parse(TWO_AGENTS + "permissions: [{type: deny, sender: '*', targets: ['*']}]")
    assert cfg.permissions == [DenyRule(sender="*", targets=["*"])]
    message = parse_error(TWO_AGENTS + "permissions: [{type: allow, sender: a, targets: ['*']}]")
    assert "$.permissions[0].targets[0]" in message
    assert "deny" in message


def test_unknown_permission_type_names_the_path() -> None:
    assert "$.permissions[0].type" in parse_error(TWO_AGENTS + "permissions: [{type: permit}]")


def test_allow_rule_needs_a_target() -> None:
    message = parse_error(TWO_AGENTS + "permissions: [{type: allow, sender: a, targets: []}]")
    assert "$.permissions[0].targets" in message


def test_broadcast_with_empty_receivers_is_refused() -> None:
    rule = "{type: allow_broadcast, sender: a, receivers: []}"
    assert "$.permissions[0].receivers" in parse_error(TWO_AGENTS + f"permissions: [{rule}]")


def test_unhashable_yaml_key_is_a_yaml_error() -> None:
    assert "invalid YAML" in parse_error("agents: []\n? [a, b]\n: 1\n")


def test_group_rule_needs_two_distinct_agents() -> None:
    assert "$.permissions[0].agents" in parse_error(
        TWO_AGENTS + "permissions: [{type: allow_bidirectional, agents: [a]}]"
    )
    assert "twice" in parse_error(
        TWO_AGENTS + "permissions: [{type: allow_network, agents: [a, a]}]"
    )


@pytest.mark.parametrize(
    "addr", ["localhost", "127.0.0.1:", ":80", "127.0.0.1:65536", "::1:80", "[nope]:80", "h:x1"]
)
def test_bad_listen_address_is_refused(addr: str) -> None:
    assert "server_listen_addr" in parse_error(f"server_listen_addr: '{addr}'")


def test_bad_trust_domain_is_refused() -> None:
    assert "$.trust_domain" in parse_error("trust_domain: Has-Capitals")


@pytest.mark.parametrize("missing", ["tls_ca_path", "tls_server_cert_path", "tls_server_key_path"])
def test_partial_server_tls_triple_is_refused(missing: str) -> None:
    lines = [
        f"{key}: x.pem"
        for key in ("tls_ca_path", "tls_server_cert_path", "tls_server_key_path")
        if key != missing
    ]
    message = parse_error("\n".join(lines))
    assert f"$.{missing}" in message
    assert "all three" in message


def test_agent_cert_without_key_is_refused() -> None:
    message = parse_error("agents: [{agent_id: a}, {agent_id: b, tls_cert_path: b.pem}]")
    assert "$.agents[1]" in message
    assert "tls_key_path" in message


def test_malformed_class_path_is_refused() -> None:
    message = parse_error("agents: [{agent_id: a, class_path: my_app.agents.AgentA}]")
    assert "$.agents[0]" in message
    assert "package.module:ClassName" in message


def test_bad_dlp_regex_names_the_rule() -> None:
    message = parse_error(
        "gateway: {dlp: {rules: [{id: ok, type: t, pattern: 'a+'},"
        " {id: broken_rule, type: t, pattern: '(unclosed'}]}}"
    )
    assert "$.gateway.dlp.rules[1]" in message
    assert "broken_rule" in message


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        ("(?<=x)secret", "lookbehind"),
        ("secret(?!s)", "lookahead"),
        ("a++", "possessive"),
        ("a{1001}", "repetition count"),
    ],
)
def test_a_pattern_the_linear_time_engine_cannot_run_is_refused_at_load(
    pattern: str, why: str
) -> None:
    rules = f"[{{id: r1, type: t, pattern: '{pattern}'}}]"
    message = parse_error(f"gateway: {{dlp: {{rules: {rules}}}}}")
    assert "$.gateway.dlp.rules[0]" in message, why
    assert "'r1'" in message
    assert "linear-time engine (RE2)" in message
    assert "without backreferences, lookaround or possessive repetition" in message


def test_bad_dlp_action_is_refused() -> None:
    assert "$.gateway.dlp.policy_overrides" in parse_error(
        "gateway: {dlp: {policy_overrides: {email: shred}}}"
    )


def test_sample_ratio_above_one_is_refused() -> None:
    assert "$.gateway.telemetry.sample_ratio" in parse_error(
        "gateway: {telemetry: {sample_ratio: 1.5}}"
    )


def test_nonpositive_limit_is_refused() -> None:
    assert "$.limits.ack_timeout" in parse_error("limits: {ack_timeout: 0}")


def test_store_backend_is_one_of_three() -> None:
    assert "$.store.backend" in parse_error("store: {backend: postgres}")


def test_store_settings_belong_to_their_backend() -> None:
    assert "path is a setting of the sqlite backend" in parse_error(
        "store: {backend: redis, path: x.db}"
    )
    assert "url is a setting of the redis backend" in parse_error(
        "store: {backend: sqlite, url: 'redis://h'}"
    )


def test_sqlite_path_resolves_against_the_config_directory() -> None:
    config = parse_config(
        "store: {backend: sqlite, path: data/mas.db}", base_dir=Path("/base"), env={}
    )
    assert config.store.path == "/base/data/mas.db"


def test_roles_and_revocations() -> None:
    config = parse_config(
        "roles: {workers: {permissions: ['send:worker_*']}}\n"
        "agents: [{agent_id: boss, roles: [workers]}]\n"
        "revoked: {serials: ['0x1F', '42'], fingerprints: ['" + "AB" * 32 + "']}\n",
        base_dir=Path("/base"),
        env={},
    )
    assert config.agents[0].roles == ["workers"]
    assert config.revoked.serial_numbers() == {31, 42}
    assert config.revoked.sha256_fingerprints() == {"ab" * 32}
    assert "unknown role 'nobody'" in parse_error("agents: [{agent_id: a, roles: [nobody]}]")
    assert "send:<target-glob>" in parse_error("roles: {r: {permissions: ['receive:*']}}")


def test_revoked_fingerprints_are_exactly_64_hex_digits() -> None:
    colons = ":".join(["AB"] * 32)
    config = parse_config(f"revoked: {{fingerprints: ['{colons}']}}", base_dir=Path("/"), env={})
    assert config.revoked.sha256_fingerprints() == {"ab" * 32}
    for wrong in ("AB" * 31 + "A", ":".join(["AB"] * 31) + ":::", "AB" * 32 + ":" + "AB" * 8):
        message = parse_error(f"revoked: {{fingerprints: ['{wrong}']}}")
        assert "64 hex digits" in message
        assert "$.revoked" in message


def test_yaml_syntax_error_reports_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"^mas\.yaml:3:\d+: invalid YAML"):
        parse_config(
            "agents:\n  - {agent_id: a\nserver_listen_addr: x\n",
            base_dir=Path("/base"),
            source="mas.yaml",
            env={},
        )


def test_duplicate_yaml_key_is_refused_with_its_line() -> None:
    message = parse_error("agents: []\ntrust_domain: a\nagents: []\n")
    assert message.startswith("<string>:3:")
    assert "duplicate key 'agents'" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert "top level must be a mapping" in parse_error(text)


def test_config_error_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_text("agents: [{agent_id: a, instances: 0}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_check_config_catches_problems_in_configs_built_in_code() -> None:
    config = MasConfig(agents=[AgentSpec(agent_id="a")], tls_ca_path="/ca.pem")
    with pytest.raises(ConfigError, match="tls_server_cert_path"):
        check_config(config)


# --- paths --------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "deploy"
    conf_dir.mkdir()
    (conf_dir / CONFIG_FILE_NAME).write_text(
        "tls_ca_path: ../pki/ca.pem\n"
        "tls_server_cert_path: /etc/mas/server.pem\n"
        "tls_server_key_path: server.key\n"
        "agents: [{agent_id: a, tls_cert_path: a.pem, tls_key_path: keys/a.key}]\n"
        "gateway: {audit: {file_path: logs/audit.jsonl}}\n"
    )
    cfg = load_config(conf_dir, env={}, cwd=tmp_path).config
    assert cfg.tls_ca_path == str(tmp_path / "pki/ca.pem")
    assert cfg.tls_server_cert_path == "/etc/mas/server.pem"
    assert cfg.tls_server_key_path == str(conf_dir / "server.key")
    assert cfg.agents[0].tls_cert_path == str(conf_dir / "a.pem")
    assert cfg.agents[0].tls_key_path == str(conf_dir / "keys/a.key")
    assert cfg.gateway.audit.file_path == str(conf_dir / "logs/audit.jsonl")


# --- environment overrides ----------------------------------------------------------------


def test_environment_overrides_the_file() -> None:
    cfg = parse(
        "server_listen_addr: 127.0.0.1:1\ntrust_domain: file.example\n",
        env={
            "MAS_SERVER_LISTEN_ADDR": "[::1]:7000",
            "MAS_TRUST_DOMAIN": "env.example",
            "MAS_REDIS_URL": "rediss://cache:6380/1",
        },
    )
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 7000)
    assert cfg.trust_domain == "env.example"
    assert cfg.gateway.redis.url == "rediss://cache:6380/1"


def test_environment_tls_paths_resolve_against_the_working_directory() -> None:
    cfg = parse(
        "tls_ca_path: ca.pem\ntls_server_cert_path: s.pem\ntls_server_key_path: s.key\n",
        env={"MAS_TLS_CA_PATH": "other/ca.pem", "MAS_TLS_SERVER_KEY_PATH": "/abs/s.key"},
    )
    assert cfg.tls_ca_path == "/cwd/other/ca.pem"
    assert cfg.tls_server_cert_path == "/base/s.pem"
    assert cfg.tls_server_key_path == "/abs/s.key"


def test_environment_can_supply_the_whole_tls_triple() -> None:
    cfg = parse(
        "",
        env={
            "MAS_TLS_CA_PATH": "ca.pem",
            "MAS_TLS_SERVER_CERT_PATH": "s.pem",
            "MAS_TLS_SERVER_KEY_PATH": "s.key",
        },
    )
    assert cfg.tls_configured
    assert cfg.tls_server_cert_path == "/cwd/s.pem"


def test_empty_environment_variable_is_ignored() -> None:
    assert parse("trust_domain: keep", env={"MAS_TRUST_DOMAIN": ""}).trust_domain == "keep"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAS_SERVER_LISTEN_ADDR", "nope"),
        ("MAS_TRUST_DOMAIN", "UPPER"),
        ("MAS_REDIS_URL", "http://x"),
    ],
)
def test_invalid_environment_value_is_refused_naming_the_variable(var: str, value: str) -> None:
    assert var in parse_error("", env={var: value})


def test_partial_tls_triple_from_environment_is_refused() -> None:
    assert "$.tls_server_cert_path" in parse_error("", env={"MAS_TLS_CA_PATH": "ca.pem"})


# --- finding the file ---------------------------------------------------------------------


def test_explicit_file_is_used_first(tmp_path: Path) -> None:
    explicit = tmp_path / "custom.yaml"
    explicit.write_text("")
    (tmp_path / "env.yaml").write_text("")
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    env = {CONFIG_ENV_VAR: str(tmp_path / "env.yaml")}
    assert find_config_file(explicit, env=env, cwd=tmp_path) == explicit


def test_explicit_directory_means_its_mas_yaml(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    assert find_config_file(tmp_path, env={}) == tmp_path / CONFIG_FILE_NAME


def test_explicit_relative_path_resolves_against_cwd(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("")
    assert find_config_file("conf/x.yaml", env={}, cwd=tmp_path) == tmp_path / "conf" / "x.yaml"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(tmp_path / "absent.yaml", env={})


def test_environment_variable_comes_before_the_upward_search(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text("")
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    env = {CONFIG_ENV_VAR: str(tmp_path / "env.yaml")}
    assert find_config_file(env=env, cwd=tmp_path) == tmp_path / "env.yaml"


def test_environment_variable_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    with pytest.raises(ConfigError, match=CONFIG_ENV_VAR):
        find_config_file(env={CONFIG_ENV_VAR: str(tmp_path / "gone.yaml")}, cwd=tmp_path)


def test_upward_search_finds_the_nearest_mas_yaml(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / CONFIG_FILE_NAME).write_text("")
    (tmp_path / "a" / CONFIG_FILE_NAME).write_text("")
    assert find_config_file(env={}, cwd=deep) == tmp_path / "a" / CONFIG_FILE_NAME


def test_not_found_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config_file(env={}, cwd=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert CONFIG_ENV_VAR in message
    assert "mas.yaml.example" in message


def test_load_config_reads_the_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("trust_domain: from-env-file\n")
    loaded = load_config(env={CONFIG_ENV_VAR: str(path)}, cwd=tmp_path)
    assert loaded.path == path
    assert loaded.config.trust_domain == "from-env-file"


# --- the shipped example -------------------------------------------------------------------


def test_example_file_loads() -> None:
    example = REPO_ROOT / "mas.yaml.example"
    loaded = load_config(example, env={})
    cfg = loaded.config
    assert cfg.tls_configured
    assert cfg.tls_ca_path == str(REPO_ROOT / "certs" / "ca.pem")
    assert cfg.agent_ids == frozenset({"agent_a", "agent_b", "agent_c"})
    assert cfg.gateway.audit.file_path == str(REPO_ROOT / "audit.log")


def test_example_commented_permissions_are_valid() -> None:
    text = (REPO_ROOT / "mas.yaml.example").read_text()
    commented = [
        line.split("# - ", 1)[1].split("  #", 1)[0]
        for line in text.splitlines()
        if line.lstrip().startswith("# - {type:")
    ]
    rule_types = {rule.split(",", 1)[0].removeprefix("{type: ") for rule in commented}
    assert rule_types == {"allow", "allow_network", "allow_broadcast", "allow_wildcard", "deny"}
    agents = "agents: [{agent_id: agent_a}, {agent_id: agent_b}, {agent_id: agent_c}]\n"
    cfg = parse(agents + "permissions:\n" + "".join(f"  - {r}\n" for r in commented))
    assert len(cfg.permissions) == len(commented)


def test_bad_dlp_rule_is_a_config_error_with_its_path() -> None:
    message = parse_error("gateway: {dlp: {disable_defaults: [no_such_rule]}}")
    assert "$.gateway.dlp" in message
    assert "no_such_rule" in message


def test_accept_settings_are_read_for_redis_and_refused_elsewhere() -> None:
    store = "store: {backend: redis, accept_replicas: 2, accept_fsync: true, accept_timeout: 0.25}"
    cfg = parse(f"{store}\nagents: [{{agent_id: a}}]\n")
    assert (cfg.store.accept_replicas, cfg.store.accept_fsync) == (2, True)
    assert cfg.store.accept_timeout == 0.25
    for setting in ("accept_replicas: 1", "accept_fsync: true", "accept_timeout: 1.0"):
        message = parse_error(f"store: {{backend: sqlite, {setting}}}\nagents: [{{agent_id: a}}]\n")
        assert "setting of the redis backend" in message, message
    assert "accept_replicas" in parse_error(
        "store: {backend: redis, accept_replicas: -1}\nagents: [{agent_id: a}]\n"
    )
