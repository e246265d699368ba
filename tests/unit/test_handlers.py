"""Handlers and delivery dispatch (pure): the registry, payload validation, outcomes, and
what each server frame means for the agent (``StreamState``), without a socket."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mas._proto import runtime_pb2 as pb
from mas.agent import Agent, AgentMessage, TLSFiles
from mas.agent.handlers import (
    ACK,
    Failure,
    HandlerSpec,
    collect_handlers,
    convert_payload,
    decide,
    describe_exception,
)
from mas.agent.message import encode_object
from mas.agent.stream import (
    Discarded,
    FrameResult,
    Incoming,
    ReplyArrived,
    SendAcks,
    SendNack,
    ServerRefused,
    StreamState,
    Welcomed,
)
from mas.envelope import Envelope, ErrorInfo, Meta, encode_envelope
from mas.errors import (
    REMOTE_HANDLER_ERROR,
    REMOTE_VALIDATION_ERROR,
    PermissionDeniedError,
    RateLimitedError,
    RejectedError,
)


class Patient(msgspec.Struct):
    text: str
    urgent: bool = False


class Base(Agent[dict[str, object]]):
    @Agent.on("patient_message", model=Patient)
    async def handle_patient(self, message: AgentMessage, payload: Patient) -> None:
        pass

    @Agent.on("ping")
    async def handle_ping(self, message: AgentMessage) -> None:
        pass

    @Agent.on("status")
    async def handle_status(self, message: AgentMessage) -> None:
        pass


class Child(Base):
    @Agent.on("ping")  # replaces Base.handle_ping for "ping"
    async def child_ping(self, message: AgentMessage) -> None:
        pass

    async def handle_status(self, message: AgentMessage) -> None:  # plain override by name
        pass

    @Agent.on("audit")
    async def audit(self, message: AgentMessage) -> None:
        pass


class Mover(Base):
    @Agent.on("moved")  # the same method name, now for another type
    async def handle_status(self, message: AgentMessage) -> None:
        pass


# -- registry --------------------------------------------------------------------------------


def test_handlers_are_collected_at_class_creation() -> None:
    assert Base._handlers == {
        "patient_message": HandlerSpec("patient_message", "handle_patient", Patient),
        "ping": HandlerSpec("ping", "handle_ping", None),
        "status": HandlerSpec("status", "handle_status", None),
    }
    assert Agent._handlers == {}


def test_subclasses_inherit_and_override_handlers() -> None:
    handlers = Child._handlers
    assert set(handlers) == {"patient_message", "ping", "status", "audit"}
    assert handlers["patient_message"].attr == "handle_patient"  # inherited
    assert handlers["ping"].attr == "child_ping"  # replaced by a decorated method
    assert Base._handlers["ping"].attr == "handle_ping"  # the base is untouched


def test_a_plain_override_by_name_is_what_runs() -> None:
    spec = Child._handlers["status"]
    bound = getattr(Child("c"), spec.attr)
    assert bound.__func__ is Child.__dict__["handle_status"]


def test_redecorating_a_method_for_another_type_moves_it() -> None:
    assert set(Mover._handlers) == {"patient_message", "ping", "moved"}
    assert Mover._handlers["moved"].attr == "handle_status"


def test_two_handlers_for_one_type_in_a_class_are_an_error() -> None:
    with pytest.raises(TypeError, match="two handlers for 'ping': first and second"):

        class Twice(Agent[dict[str, object]]):
            @Agent.on("ping")
            async def first(self, message: AgentMessage) -> None:
                pass

            @Agent.on("ping")
            async def second(self, message: AgentMessage) -> None:
                pass


def test_a_subclass_may_take_over_a_type_its_base_handles() -> None:
    assert collect_handlers(Child)["ping"] == HandlerSpec("ping", "child_ping", None)


def test_a_handler_must_be_async() -> None:
    with pytest.raises(TypeError, match="async def"):

        class Sync(Agent[dict[str, object]]):
            @Agent.on("x")
            def handle(self, message: AgentMessage) -> None:
                pass


@pytest.mark.parametrize("bad", ["", 3, None])
def test_a_message_type_must_be_a_non_empty_string(bad: Any) -> None:
    with pytest.raises(TypeError, match="message_type"):
        Agent.on(bad)


def test_a_model_must_be_a_type() -> None:
    with pytest.raises(TypeError, match="model"):
        Agent.on("x", model="Patient")
    Agent.on("x", model=list[int])  # generic aliases are types for msgspec


# -- payload validation and outcomes ---------------------------------------------------------


def test_a_fitting_payload_becomes_the_typed_object() -> None:
    assert convert_payload(Patient, {"text": "hi"}) == Patient("hi")
    assert convert_payload(Patient, {"text": "hi", "urgent": True, "x": 1}) == Patient("hi", True)


@pytest.mark.parametrize("data", [{}, {"text": 3}, {"text": "hi", "urgent": "yes"}, {"text": None}])
def test_a_misfit_payload_raises_a_validation_error_naming_the_field(data: Any) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert_payload(Patient, data)
    assert "text" in str(caught.value) or "urgent" in str(caught.value)
    assert describe_exception(caught.value).startswith("ValidationError: ")


def test_success_is_acked() -> None:
    assert decide(expects_reply=False, failure=None, replied=False) == ACK
    assert decide(expects_reply=True, failure=None, replied=True) == ACK


@pytest.mark.parametrize("failure", [Failure.HANDLER_ERROR, Failure.TIMEOUT])
def test_a_failed_request_gets_a_handler_error_reply_and_is_acked(failure: Failure) -> None:
    outcome = decide(expects_reply=True, failure=failure, replied=False)
    assert outcome.ack and outcome.error_reply_kind == REMOTE_HANDLER_ERROR


def test_a_request_with_a_misfit_payload_gets_a_validation_error_reply() -> None:
    outcome = decide(expects_reply=True, failure=Failure.VALIDATION, replied=False)
    assert outcome.ack and outcome.error_reply_kind == REMOTE_VALIDATION_ERROR


def test_a_request_already_replied_to_gets_no_second_reply() -> None:
    assert decide(expects_reply=True, failure=Failure.HANDLER_ERROR, replied=True) == ACK


@pytest.mark.parametrize("failure", [Failure.HANDLER_ERROR, Failure.TIMEOUT])
def test_a_failed_send_is_nacked_for_retry(failure: Failure) -> None:
    outcome = decide(expects_reply=False, failure=failure, replied=False)
    assert outcome.nack and outcome.retryable and outcome.error_reply_kind is None


def test_a_send_with_a_misfit_payload_is_nacked_for_good() -> None:
    outcome = decide(expects_reply=False, failure=Failure.VALIDATION, replied=False)
    assert outcome.nack and not outcome.retryable


def test_error_texts_name_the_exception_type_and_are_bounded() -> None:
    assert describe_exception(ValueError("bad")) == "ValueError: bad"
    text = describe_exception(RuntimeError("x" * 5000), limit=100)
    assert len(text) == 100 and text.endswith("...")


# -- constructor and data ---------------------------------------------------------------------


def test_unknown_keyword_arguments_are_a_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match="prefech, tsl"):
        Base("a", prefech=3, tsl=None)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"handler_timeout": 0}, ValueError),
        ({"rpc_timeout": -1.0}, ValueError),
        ({"shutdown_grace": float("inf")}, ValueError),
        ({"connect_timeout": "5"}, TypeError),
        ({"max_concurrency": 0}, ValueError),
        ({"prefetch": -1}, ValueError),
        ({"server_addr": "localhost"}, ValueError),
        ({"server_addr": "::1:50051"}, ValueError),
        ({"tls": "ca.pem"}, TypeError),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Base("a", **kwargs)


def test_the_runner_injected_options_are_accepted() -> None:
    agent = Base(
        "a",
        server_addr="[::1]:7000",
        tls=TLSFiles(ca_path="ca.pem", cert_path="a.pem", key_path="a.key"),
        runtime_stop=lambda: None,
    )
    assert agent._address.host == "::1" and agent._address.port == 7000
    assert agent.agent_id == "a"
    assert len(agent.instance_id) == 16
    assert agent.instance_id != Base("a").instance_id


def test_stop_runtime_calls_the_injected_hook() -> None:
    calls: list[str] = []
    Base("a", runtime_stop=lambda: calls.append("stop")).stop_runtime()
    assert calls == ["stop"]


def test_message_data_must_be_a_json_object() -> None:
    assert encode_object({"a": [1, None]}) == '{"a":[1,null]}'
    assert encode_object(Patient("x")) == '{"text":"x","urgent":false}'
    with pytest.raises(TypeError, match="dict"):
        encode_object([1, 2])
    with pytest.raises(TypeError, match="JSON"):
        encode_object({"a": object()})


async def test_replying_to_a_non_request_is_refused() -> None:
    message = AgentMessage(envelope("hello"))
    with pytest.raises(RuntimeError, match="not a request"):
        await message.reply("x", {})


async def test_a_request_gets_exactly_one_reply() -> None:
    sent: list[tuple[str, str, Any]] = []

    async def replier(cid: str, message_type: str, data: Any) -> str:
        sent.append((cid, message_type, data))
        return "m1"

    message = AgentMessage(envelope("q", request_cid="c1"), replier)
    assert await message.reply("answer", {"ok": True}) == "m1"
    assert message.replied
    with pytest.raises(RuntimeError, match="already replied"):
        await message.reply("answer", {})
    assert sent == [("c1", "answer", {"ok": True})]


# -- server frames -> actions (StreamState) --------------------------------------------------


def envelope(
    message_type: str = "note",
    *,
    reply_to: str | None = None,
    request_cid: str | None = None,
    error: ErrorInfo | None = None,
) -> Envelope:
    meta = Meta()
    if reply_to is not None:
        meta = Meta(correlation_id=reply_to, is_reply=True, error=error)
    elif request_cid is not None:
        meta = Meta(correlation_id=request_cid, expects_reply=True)
    return Envelope(
        message_id="m-" + message_type,
        sender_id="pong",
        target_id="ping",
        message_type=message_type,
        data={"n": 1},
        meta=meta,
    )


def delivery(delivery_id: str, env: Envelope) -> pb.Delivery:
    return pb.Delivery(delivery_id=delivery_id, envelope_json=encode_envelope(env).decode())


def deliver(*deliveries: pb.Delivery) -> pb.ServerEvent:
    if len(deliveries) == 1:
        return pb.ServerEvent(delivery=deliveries[0])
    return pb.ServerEvent(deliveries=pb.DeliveryBatch(deliveries=list(deliveries)))


def accepted(seq: int, cid: str = "") -> pb.ServerEvent:
    return pb.ServerEvent(result=pb.Result(seq=seq, message_id=f"mid{seq}", correlation_id=cid))


def test_welcome_and_server_errors_are_reported() -> None:
    core = StreamState()
    welcome = pb.Welcome(agent_id="ping", instance_id="i1", batching=True, prefetch=8)
    assert core.handle(pb.ServerEvent(welcome=welcome)) == [Welcomed("ping", "i1", True, 8)]
    error = pb.ServerError(code="UNAUTHENTICATED", message="not_allowlisted")
    assert core.handle(pb.ServerEvent(error=error)) == [
        ServerRefused("UNAUTHENTICATED", "not_allowlisted")
    ]
    assert core.handle(pb.ServerEvent()) == [Discarded("unknown server frame None")]


def test_frames_are_numbered_per_connection_and_settled_by_their_result() -> None:
    core = StreamState()
    assert [core.open_frame("send"), core.open_frame("reply")] == [1, 2]
    assert core.handle(accepted(2)) == [FrameResult(2, "reply", "mid2", "", None)]
    assert core.handle(accepted(1)) == [FrameResult(1, "send", "mid1", "", None)]
    assert core.frames_in_flight == 0
    assert core.handle(accepted(1)) == [Discarded("result for frame 1, which nobody waits for")]


def test_a_rejection_carries_the_typed_error_and_retry_after() -> None:
    core = StreamState()
    core.open_frame("send")
    core.open_frame("send")
    limited = pb.Result(
        seq=1,
        error=pb.ServerError(code="RESOURCE_EXHAUSTED", message="rate_limited"),
        retry_after_seconds=2.5,
    )
    [result] = core.handle(pb.ServerEvent(result=limited))
    assert isinstance(result, FrameResult) and isinstance(result.error, RateLimitedError)
    assert result.error.retry_after == 2.5
    denied = pb.Result(seq=2, error=pb.ServerError(code="PERMISSION_DENIED", message="dlp_blocked"))
    [result] = core.handle(pb.ServerEvent(result=denied))
    assert isinstance(result, FrameResult) and isinstance(result.error, PermissionDeniedError)
    assert (result.error.reason, result.error.retry_after) == ("dlp_blocked", None)


def test_a_message_is_handed_to_the_handlers_unacked() -> None:
    core = StreamState()
    env = envelope("note")
    assert core.handle(deliver(delivery("d1", env))) == [Incoming("d1", env)]


def test_a_reply_after_its_result_goes_to_the_requester_and_is_acked() -> None:
    core = StreamState()
    seq = core.open_frame("request")
    assert core.handle(accepted(seq, "c1")) == [FrameResult(seq, "request", "mid1", "c1", None)]
    assert core.awaiting == {"c1"}
    reply = envelope("answer", reply_to="c1")
    assert core.handle(deliver(delivery("d1", reply))) == [
        ReplyArrived("c1", reply),
        SendAcks(("d1",)),
    ]
    assert core.awaiting == set()


def test_a_reply_before_its_result_is_stashed_then_handed_over() -> None:
    core = StreamState()
    seq = core.open_frame("request")
    reply = envelope("answer", reply_to="c1")
    assert core.handle(deliver(delivery("d1", reply))) == [SendAcks(("d1",))]
    assert core.stashed == {"c1"}
    assert core.handle(accepted(seq, "c1")) == [
        FrameResult(seq, "request", "mid1", "c1", None),
        ReplyArrived("c1", reply),
    ]
    assert core.stashed == set() and core.awaiting == set()


def test_a_unary_request_stashes_a_reply_that_comes_before_its_answer() -> None:
    # Toward a server without the fast path, a request is a unary RPC; the reply may come on
    # the stream before the RPC's answer names the correlation id.
    core = StreamState()
    core.begin_unary_request()
    reply = envelope("answer", reply_to="c1")
    assert core.handle(deliver(delivery("d1", reply))) == [SendAcks(("d1",))]
    assert core.end_unary_request("c1") == reply
    assert core.stashed == set() and core.awaiting == set()


def test_a_unary_request_answered_first_awaits_its_reply() -> None:
    core = StreamState()
    core.begin_unary_request()
    assert core.end_unary_request("c1") is None
    assert core.awaiting == {"c1"}
    reply = envelope("answer", reply_to="c1")
    assert core.handle(deliver(delivery("d1", reply)))[0] == ReplyArrived("c1", reply)


def test_a_failed_unary_request_leaves_nothing_stashed() -> None:
    core = StreamState()
    core.begin_unary_request()
    core.handle(deliver(delivery("d1", envelope("answer", reply_to="c9"))))
    assert core.end_unary_request(None) is None
    assert core.stashed == set() and core.awaiting == set()


def test_an_error_reply_is_handed_over_like_any_reply() -> None:
    core = StreamState()
    core.handle(accepted(core.open_frame("request"), "c1"))
    reply = envelope("mas.error", reply_to="c1", error=ErrorInfo(kind="handler_error", message="x"))
    [arrived, _] = core.handle(deliver(delivery("d1", reply)))
    assert isinstance(arrived, ReplyArrived)
    assert arrived.envelope.meta.error == ErrorInfo(kind="handler_error", message="x")


def test_a_reply_nobody_waits_for_is_acked_and_dropped() -> None:
    core = StreamState()
    core.handle(accepted(core.open_frame("request"), "c1"))
    core.stop_awaiting("c1")  # the requester timed out
    [dropped, ack] = core.handle(deliver(delivery("d1", envelope("late", reply_to="c1"))))
    assert isinstance(dropped, Discarded) and dropped.correlation_id == "c1"
    assert not dropped.notable
    assert ack == SendAcks(("d1",))


def test_a_duplicate_reply_is_dropped_correlation_ids_are_single_use() -> None:
    core = StreamState()
    core.handle(accepted(core.open_frame("request"), "c1"))
    reply = envelope("answer", reply_to="c1")
    assert isinstance(core.handle(deliver(delivery("d1", reply)))[0], ReplyArrived)
    assert isinstance(core.handle(deliver(delivery("d2", reply)))[0], Discarded)


def test_the_stash_is_bounded_oldest_first() -> None:
    core = StreamState(stash_limit=2)
    core.open_frame("request")
    core.handle(deliver(delivery("d1", envelope("a", reply_to="c1"))))
    core.handle(deliver(delivery("d2", envelope("b", reply_to="c2"))))
    actions = core.handle(deliver(delivery("d3", envelope("c", reply_to="c3"))))
    assert actions == [
        Discarded("early-reply stash full", correlation_id="c1", notable=True),
        SendAcks(("d3",)),
    ]
    assert core.stashed == {"c2", "c3"}


def test_the_stash_empties_when_no_request_awaits_its_result() -> None:
    core = StreamState()
    first, second = core.open_frame("request"), core.open_frame("request")
    core.handle(deliver(delivery("d1", envelope("a", reply_to="stray"))))
    core.handle(accepted(first, "c1"))
    assert core.stashed == {"stray"}  # the second request could still claim it
    core.handle(accepted(second, "c2"))
    assert core.stashed == set()


def test_a_rejected_request_waits_for_no_reply() -> None:
    core = StreamState()
    seq = core.open_frame("request")
    refused = pb.Result(seq=seq, error=pb.ServerError(code="NOT_FOUND", message="unknown_target"))
    [result] = core.handle(pb.ServerEvent(result=refused))
    assert isinstance(result, FrameResult) and result.error is not None
    assert core.awaiting == set()


def test_an_accepted_request_without_correlation_id_is_an_error() -> None:
    core = StreamState()
    [result] = core.handle(accepted(core.open_frame("request")))
    assert isinstance(result, FrameResult) and isinstance(result.error, RejectedError)
    assert result.error.reason == "missing_correlation_id"


def test_an_abandoned_frame_ignores_its_late_result() -> None:
    core = StreamState()
    seq = core.open_frame("request")
    core.handle(deliver(delivery("d1", envelope("a", reply_to="c1"))))
    core.abandon_frame(seq)
    assert core.stashed == set()
    assert isinstance(core.handle(accepted(seq, "c1"))[0], Discarded)


def test_a_lost_connection_returns_the_unsettled_frames_and_restarts_numbering() -> None:
    core = StreamState()
    core.open_frame("send")
    core.handle(accepted(core.open_frame("request"), "c1"))
    core.open_frame("reply")
    assert core.connection_lost() == [1, 3]
    assert core.frames_in_flight == 0
    assert core.awaiting == {"c1"}  # its reply may still come after the reconnect
    assert core.open_frame("send") == 1


def test_a_batch_is_split_into_replies_acks_and_messages() -> None:
    core = StreamState()
    core.handle(accepted(core.open_frame("request"), "c1"))
    note, reply = envelope("note"), envelope("answer", reply_to="c1")
    actions = core.handle(deliver(delivery("d1", note), delivery("d2", reply)))
    assert actions == [ReplyArrived("c1", reply), SendAcks(("d2",)), Incoming("d1", note)]


def test_an_undecodable_envelope_is_nacked_for_good() -> None:
    core = StreamState()
    bad = pb.Delivery(delivery_id="d1", envelope_json='{"message_id": 1}')
    [nack, dropped] = core.handle(pb.ServerEvent(delivery=bad))
    assert nack == SendNack("d1", "invalid_envelope", False)
    assert isinstance(dropped, Discarded) and dropped.notable
