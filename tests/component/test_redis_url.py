"""The Redis URL: ``MAS_REDIS_URL`` wins over the file, and its password is never shown.

A real ``redis-server`` that requires a password; the config is loaded from a real file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
import trio
from redis_server import running_redis

from mas.config import load_config, redact_url
from mas.errors import ConfigError
from mas.runtime import open_store

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw1@host/0", "redis://user:***@host/0"),
        (
            "rediss://user:p%40ss@host/0?ssl_cert_reqs=none",
            "rediss://user:***@host/0?ssl_cert_reqs=none",
        ),
        ("redis://host/0?password=pw1&db=2", "redis://host/0?password=***&db=2"),
        ("unix:///tmp/r.sock?PassWord=pw1", "unix:///tmp/r.sock?PassWord=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_bad_redis_url_in_the_file_is_refused_without_its_password(tmp_path: Path) -> None:
    path = tmp_path / "mas.yaml"
    path.write_text(f"gateway: {{redis: {{url: 'http://:{PASSWORD}@host/0'}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert PASSWORD not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    "env_url",
    [
        "redis://127.0.0.1:{port}/0?password=" + PASSWORD,
        "redis://default:" + PASSWORD + "@127.0.0.1:{port}/0",
    ],
)
async def test_mas_redis_url_overrides_the_files_store_url_and_is_logged_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, env_url: str
) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", PASSWORD)
        admin.close()
        path = tmp_path / "mas.yaml"
        # The file names a store nobody listens on, with a password of its own.
        path.write_text("store: {backend: redis, url: 'redis://:filepw@127.0.0.1:1/0'}\n")
        url = env_url.format(port=server.port)
        loaded = load_config(path, env={"MAS_REDIS_URL": url})
        assert loaded.config.store.url == url
        assert loaded.config.gateway.redis.url == url
        with caplog.at_level(logging.INFO, logger="mas"), trio.fail_after(20):
            async with open_store(loaded.config, tmp_path) as store:
                assert await store.audit_records() == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"127.0.0.1:{server.port}" in logged
    assert "***" in logged
    assert PASSWORD not in logged
