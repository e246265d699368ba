"""The envelope codec and identifiers (pure)."""

from __future__ import annotations

import msgspec
import pytest

from mas.envelope import (
    ERROR_REPLY_TYPE,
    Envelope,
    ErrorInfo,
    Meta,
    PayloadError,
    decode_data,
    decode_envelope,
    encode_envelope,
    error_info,
    new_correlation_id,
    new_delivery_id,
    new_message_id,
    with_attempt,
)
from mas.errors import (
    CircuitOpenError,
    InvalidMessageError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RejectedError,
    RemoteHandlerError,
    RemoteValidationError,
    ReplyTooLateError,
    ResourceExhaustedError,
    rejected_error,
    remote_error,
)

SEED_FIELDS = {"message_id", "sender_id", "target_id", "message_type", "data", "meta", "timestamp"}
SEED_META_FIELDS = {
    "version",
    "correlation_id",
    "expects_reply",
    "is_reply",
    "sender_instance_id",
    "reply_to_instance_id",
    "traceparent",
    "tracestate",
}


def _envelope(**meta: object) -> Envelope:
    return Envelope(
        message_id=new_message_id(),
        sender_id="a",
        target_id="b",
        message_type="t",
        data={"none": None, "flag": False, "nested": [1, {"x": [True, 2.5]}], "text": "é\n"},
        meta=Meta(**meta),  # type: ignore[arg-type]
        timestamp=1700000000.25,
    )


def test_envelope_round_trips_exactly() -> None:
    envelope = _envelope(correlation_id="c", expects_reply=True, sender_instance_id="i")
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_envelope_json_keeps_the_seed_field_names() -> None:
    raw = msgspec.json.decode(encode_envelope(_envelope()))
    assert set(raw) >= SEED_FIELDS
    assert set(raw["meta"]) >= SEED_META_FIELDS
    assert raw["meta"]["version"] == 1


def test_envelope_from_a_seed_client_without_mas_fields_decodes() -> None:
    raw = (
        b'{"sender_id":"a","target_id":"b","message_type":"t","data":{},'
        b'"meta":{"version":1},"timestamp":1.0,"message_id":"m"}'
    )
    envelope = decode_envelope(raw)
    assert envelope.meta.attempt == 1
    assert envelope.meta.error is None


def test_error_reply_carries_kind_and_message() -> None:
    envelope = _envelope(is_reply=True, error=ErrorInfo(kind="handler_error", message="boom"))
    decoded = decode_envelope(encode_envelope(envelope))
    assert decoded.meta.error == ErrorInfo(kind="handler_error", message="boom")


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"sender_id": 1}', b"not json"])
def test_malformed_envelope_raises_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_envelope(raw)


def test_payload_must_be_a_json_object() -> None:
    assert decode_data('{"a": [1, null]}') == {"a": [1, None]}
    assert decode_data("") == {}
    for bad in ("[1]", "1", '"s"', "null", "{"):
        with pytest.raises(PayloadError):
            decode_data(bad)


def test_with_attempt_stamps_only_the_attempt() -> None:
    envelope = _envelope(correlation_id="c")
    stamped = with_attempt(envelope, 3)
    assert stamped.meta.attempt == 3
    assert msgspec.structs.replace(stamped, meta=envelope.meta) == envelope


def test_identifiers_are_random_and_distinct() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 for i in ids)
    assert len(new_correlation_id()) >= 32  # 192 bits
    assert new_delivery_id() != new_delivery_id()


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        ("PERMISSION_DENIED", "not_authorized", PermissionDeniedError),
        ("PERMISSION_DENIED", "dlp_blocked", PermissionDeniedError),
        ("RESOURCE_EXHAUSTED", "rate_limited", RateLimitedError),
        ("RESOURCE_EXHAUSTED", "queue_full", ResourceExhaustedError),
        ("FAILED_PRECONDITION", "circuit_open", CircuitOpenError),
        ("INVALID_ARGUMENT", "invalid_payload", InvalidMessageError),
        ("NOT_FOUND", "unknown_target", NotFoundError),
        ("INVALID_ARGUMENT", "unknown_correlation_id", InvalidMessageError),
        ("FAILED_PRECONDITION", "correlation_id_expired", ReplyTooLateError),
        ("SOMETHING_NEW", "whatever", RejectedError),
    ],
)
def test_server_rejections_map_to_typed_errors(
    code: str, reason: str, cls: type[RejectedError]
) -> None:
    error = rejected_error(code, reason, retry_after=1.5)
    assert type(error) is cls
    assert (error.code, error.reason, error.retry_after) == (code, reason, 1.5)
    assert str(error).startswith(f"{code} {reason}")  # rate_limited adds the setting to raise


def test_error_replies_map_to_remote_errors() -> None:
    assert isinstance(remote_error("validation_error", "bad"), RemoteValidationError)
    assert isinstance(remote_error("handler_error", "boom"), RemoteHandlerError)


def test_an_error_reply_must_carry_a_known_kind_and_a_message() -> None:
    assert error_info("reply", {"kind": "handler_error"}) is None  # not an error reply
    info = error_info(ERROR_REPLY_TYPE, {"kind": "handler_error", "message": "boom"})
    assert info == ErrorInfo(kind="handler_error", message="boom")
    for data in ({}, {"kind": "handler_error"}, {"kind": "other", "message": "x"}):
        with pytest.raises(PayloadError):
            error_info(ERROR_REPLY_TYPE, data)
