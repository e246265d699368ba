"""``AcceptWait``: the command an accept waits with, and the verdict on Redis's answer."""

from __future__ import annotations

from redis.exceptions import ResponseError

from mas.store.redis.accept import AcceptWait, parse_version


def test_wait_and_waitaof_commands() -> None:
    assert not AcceptWait().active
    assert AcceptWait(replicas=2, timeout=0.25).command() == ("WAIT", 2, 250)
    assert AcceptWait(fsync=True, timeout=1.0).command() == ("WAITAOF", 1, 0, 1000)
    assert AcceptWait(replicas=1, fsync=True).command()[:3] == ("WAITAOF", 1, 1)
    assert AcceptWait(replicas=1, timeout=0.0001).command() == ("WAIT", 1, 1)  # never 0: forever


def test_a_shortfall_says_what_was_not_acknowledged() -> None:
    wait = AcceptWait(replicas=2, timeout=0.5)
    assert wait.shortfall(2) is None
    assert wait.shortfall(3) is None
    assert wait.shortfall(1) == "1 of the 2 replicas asked for acknowledged it within 0.5 s"
    aof = AcceptWait(replicas=1, fsync=True, timeout=1)
    assert aof.shortfall([1, 1]) is None
    assert "did not fsync" in (aof.shortfall([0, 1]) or "")
    assert "0 of the 1 replicas asked for fsynced it" in (aof.shortfall([1, 0]) or "")
    assert "WAIT failed: ERR" in (wait.shortfall(ResponseError("ERR no")) or "")


def test_versions_compare_by_their_numbers() -> None:
    assert parse_version("7.0.15") < (7, 2) <= parse_version("7.2.4")
    assert parse_version("8.1.8-rc1") == (8, 1, 8)
    assert parse_version("") == ()
