"""``mas.cli.exits``: the one map from how a command ended to its exit status and message."""

from __future__ import annotations

import pytest

from mas.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_status,
    verdict,
)
from mas.errors import AgentLoadError, CertificateError, ConfigError, ControlError, MasError
from mas.runtime import AgentCrashLoopError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("bad key"), EXIT_USAGE),
        (AgentLoadError("bad class"), EXIT_USAGE),
        (CertificateError("bad cert"), EXIT_USAGE),
        (ControlError("no server is running"), EXIT_FAILED),
        (AgentCrashLoopError("crashed"), EXIT_FAILED),
        (MasError("failed"), EXIT_FAILED),
    ],
)
def test_a_mas_error_is_one_line_and_its_status(
    error: MasError, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(error) == status
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"mas: error: {error}\n")


def test_errors_in_groups_count_one_by_one_and_say_a_repeated_one_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = ExceptionGroup(
        "nursery",
        [MasError("a"), ExceptionGroup("inner", [MasError("a"), CertificateError("b")])],
    )
    assert exit_status(group) == EXIT_USAGE  # any usage error makes it a usage error
    assert capsys.readouterr().err == "mas: error: a\nmas: error: b\n"


def test_ctrl_c_anywhere_is_one_line_and_130(capsys: pytest.CaptureFixture[str]) -> None:
    group = BaseExceptionGroup("nursery", [MasError("a"), KeyboardInterrupt()])
    assert exit_status(group) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "mas: interrupted\n"


def test_anything_else_is_a_bug_and_keeps_its_traceback() -> None:
    with pytest.raises(ExceptionGroup):
        exit_status(ExceptionGroup("nursery", [MasError("a"), ValueError("bug")]))
    with pytest.raises(SystemExit):
        exit_status(SystemExit(2))


def test_a_verdict_is_its_message_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert verdict(EXIT_FAILED, "audit trail TAMPERED", result=True) == EXIT_FAILED
    assert capsys.readouterr() == ("", "audit trail TAMPERED\n")
    assert verdict(EXIT_OK, "audit trail OK", result=True) == EXIT_OK
    assert capsys.readouterr() == ("audit trail OK\n", "")
    assert verdict(EXIT_OK, "exported 3 record(s)") == EXIT_OK  # not the result: stderr
    assert capsys.readouterr() == ("", "exported 3 record(s)\n")
    assert verdict(EXIT_OK, "") == EXIT_OK
    assert capsys.readouterr() == ("", "")
