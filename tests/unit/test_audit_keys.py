"""The audit key file made at first start, and the retention cut (pure)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mas.audit.keys import chain_key, check_key_path, create_key, default_key_path, read_key
from mas.audit.retention import Retention, format_anchor, parse_anchor, trim_cut
from mas.errors import ConfigError


def test_the_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = default_key_path(tmp_path)
    assert read_key(path) is None
    key = create_key(path)
    assert len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert create_key(path) == key == read_key(path)


def test_the_key_is_never_made_by_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    got = chain_key(hmac_key_env=None, key_path=path, audit_file=None, env={}, create=False)
    assert got is None and not path.exists()


def test_a_key_named_by_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "k" / "audit.key"
    env = {"AUDIT_KEY": "a key of at least sixteen bytes"}
    got = chain_key(hmac_key_env="AUDIT_KEY", key_path=path, audit_file=None, env=env, create=True)
    assert got == b"a key of at least sixteen bytes" and not path.exists()


def test_a_key_in_the_audit_files_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same directory as the audit file"):
        check_key_path(tmp_path / "audit.key", str(tmp_path / "audit.jsonl"))
    check_key_path(default_key_path(tmp_path), str(tmp_path / "audit.jsonl"))  # a subdirectory


def test_a_damaged_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        create_key(path)
    assert path.read_text() == "short\n"


def test_trim_cut_keeps_the_newest_record_and_every_bound() -> None:
    times = [(seq, 100.0 + seq) for seq in range(5, 15)]  # seqs 5..14
    assert trim_cut(5, 14, times, Retention()) == 4  # nothing
    assert trim_cut(5, 14, times, Retention(keep=3)) == 11
    assert trim_cut(5, 14, times, Retention(keep=0)) == 13  # the newest stays
    assert trim_cut(5, 14, times, Retention(before=108.5)) == 8
    assert trim_cut(5, 14, times, Retention(keep=8, before=108.5)) == 8  # whichever trims more
    assert trim_cut(5, 14, times, Retention(keep=0, up_to_seq=7)) == 7
    assert trim_cut(5, 14, times, Retention(keep=0, limit=2)) == 6
    assert trim_cut(5, 4, [], Retention(keep=0)) == 4  # an empty chain


def test_anchors_round_trip_and_refuse_garbage() -> None:
    anchor = (7, "ab" * 32)
    assert parse_anchor(format_anchor(*anchor)) == anchor
    assert parse_anchor(format_anchor(*anchor).encode()) == anchor
    assert parse_anchor(None) == (0, "0" * 64)
    with pytest.raises(ValueError, match="not '<seq> <hash>'"):
        parse_anchor("seven abc")


def test_key_path_resolves_next_to_mas_yaml_and_retention_is_validated(tmp_path: Path) -> None:
    from mas.config import parse_config
    from mas.runtime import audit_key_path

    text = (
        "agents: [{agent_id: a}]\n"
        "gateway: {audit: {key_path: secrets/audit.key, retention: {max_records: 10}}}\n"
    )
    config = parse_config(text, base_dir=tmp_path, source="mas.yaml", env={})
    assert config.gateway.audit.key_path == str(tmp_path / "secrets" / "audit.key")
    assert config.gateway.audit.retention.max_records == 10
    assert audit_key_path(config, tmp_path) == tmp_path / "secrets" / "audit.key"
    default = parse_config("agents: [{agent_id: a}]\n", base_dir=tmp_path, source="m", env={})
    assert audit_key_path(default, tmp_path) == tmp_path / ".mas-keys" / "audit.key"
    with pytest.raises(ConfigError, match="max_records"):
        parse_config(
            "agents: [{agent_id: a}]\ngateway: {audit: {retention: {max_records: 0}}}\n",
            base_dir=tmp_path,
            source="m",
            env={},
        )


def test_a_key_made_by_another_process_first_is_the_one_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    path = tmp_path / "audit.key"
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_text("f" * 64 + "\n")  # the other server linked its key just now
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert create_key(path) == b"f" * 64
    assert [p.name for p in tmp_path.iterdir()] == ["audit.key"]  # no temporary file left
