"""A stand-in for a server of the seed's system (mas-framework 0.4): the base protocol only.

It serves ``Transport`` (Hello -> Welcome with ``agent_id`` and ``instance_id`` only, one
``Delivery`` per ``ServerEvent``, ``Ack``/``Nack``/``Heartbeat`` read) and the unary
``Send``, ``Request``, ``Reply``, ``Discover``, ``GetState``, ``UpdateState`` and
``ResetState``, in memory, over real mTLS (the mas purerpc adapter's listener, bound to
127.0.0.1). Like that system it knows nothing of the mas extensions: stream
send/request/reply frames and ``AckBatch`` are ignored (no ``Result`` ever comes), the
``Hello``'s batching and prefetch are ignored, and state values are kept as the text sent.
Permissions: every agent may reach every other.

::

    async with open_base_server(pki, {"pong": ["echo"], "ping": []}) as server:
        server.port, server.frames_ignored, server.acked, server.unary_calls
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from mas._proto import runtime_pb2 as pb
from mas.errors import Reason
from mas.identity import identity_from_certificate
from mas.server.grpc import GrpcServer, Method, PeerConnection
from mas.server.refusal import Refusal
from mas.server.transport import RpcStream, ServerLimits
from mas.testing import TestPKI

QUEUE_BOUND = 1000  # messages waiting per agent or instance; tests stay far below


class BaseServer:
    """The servicer of the stand-in (see the module docstring)."""

    def __init__(self, agents: Mapping[str, Sequence[str]]) -> None:
        self.capabilities = {agent: list(caps) for agent, caps in agents.items()}
        self.port = 0
        self.frames_ignored: Counter[str] = Counter()  # ClientEvent kinds it does not know
        self.acked: list[str] = []
        self.nacked: list[str] = []
        self.unary_calls: Counter[str] = Counter()
        self.state: dict[str, dict[str, str]] = {}
        self._shared = {a: trio.open_memory_channel[str](QUEUE_BOUND) for a in agents}
        self._private: dict[tuple[str, str], Any] = {}
        self._live: Counter[str] = Counter()
        self._pending: dict[str, tuple[str, str, str]] = {}  # cid -> requester, instance, target
        self.methods = {
            "Transport": Method(pb.ClientEvent, stream=self.transport),
            "Send": Method(pb.SendRequest, unary=self.send),
            "Request": Method(pb.RequestRequest, unary=self.request),
            "Reply": Method(pb.ReplyRequest, unary=self.reply),
            "Discover": Method(pb.DiscoverRequest, unary=self.discover),
            "GetState": Method(pb.GetStateRequest, unary=self.get_state),
            "UpdateState": Method(pb.UpdateStateRequest, unary=self.update_state),
            "ResetState": Method(pb.ResetStateRequest, unary=self.reset_state),
        }

    async def admit(self, peer: PeerConnection) -> str | Refusal:
        """The door check our adapter asks for: the agent id, or its refusal."""
        try:
            return self._agent(peer)
        except Refusal as exc:
            return exc

    def _agent(self, peer: PeerConnection) -> str:
        assert peer.certificate_der is not None
        agent_id = identity_from_certificate(peer.certificate_der).agent_id
        if agent_id not in self.capabilities:
            raise Refusal(Reason.NOT_ALLOWLISTED)
        return agent_id

    def _private_channel(self, agent_id: str, instance_id: str) -> Any:
        key = (agent_id, instance_id)
        if key not in self._private:
            self._private[key] = trio.open_memory_channel[str](QUEUE_BOUND)
        return self._private[key]

    @staticmethod
    def _envelope(sender: str, target: str, message_type: str, data_json: str, **meta: Any) -> str:
        return json.dumps(
            {
                "sender_id": sender,
                "target_id": target,
                "message_type": message_type,
                "data": json.loads(data_json or "{}"),
                "meta": {"version": 1, "expects_reply": False, "is_reply": False, **meta},
                "timestamp": time.time(),
                "message_id": str(time.time_ns()),
            }
        )

    # -- Transport -----------------------------------------------------------------------

    async def transport(self, peer: PeerConnection, rpc: RpcStream) -> None:
        agent_id = self._agent(peer)
        first = await rpc.receive()
        if first is None or first.WhichOneof("event") != "hello":
            raise Refusal(Reason.HELLO_REQUIRED)
        instance_id = first.hello.instance_id or secrets.token_hex(4)
        peer.state.setdefault("instances", set()).add(instance_id)
        await rpc.send(
            pb.ServerEvent(welcome=pb.Welcome(agent_id=agent_id, instance_id=instance_id))
        )
        self._live[agent_id] += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver, rpc, self._shared[agent_id][1].clone())
                private = self._private_channel(agent_id, instance_id)[1].clone()
                nursery.start_soon(self._deliver, rpc, private)
                while (frame := await rpc.receive()) is not None:
                    kind = frame.WhichOneof("event")
                    if kind == "ack":
                        self.acked.append(frame.ack.delivery_id)
                    elif kind == "nack":
                        self.nacked.append(frame.nack.delivery_id)
                    elif kind != "heartbeat":
                        self.frames_ignored[str(kind)] += 1  # what 0.4 does not know
                nursery.cancel_scope.cancel()
        finally:
            self._live[agent_id] -= 1

    async def _deliver(self, rpc: RpcStream, receive: Any) -> None:
        async with receive:
            async for envelope_json in receive:
                delivery = pb.Delivery(
                    delivery_id=secrets.token_hex(6), envelope_json=envelope_json
                )
                await rpc.send(pb.ServerEvent(delivery=delivery))

    # -- unary messaging -----------------------------------------------------------------

    def _target(self, target_id: str) -> Any:
        if target_id not in self._shared:
            raise Refusal(Reason.UNKNOWN_TARGET)
        return self._shared[target_id][0]

    async def send(self, peer: PeerConnection, request: pb.SendRequest) -> pb.SendResponse:
        self.unary_calls["Send"] += 1
        sender = self._agent(peer)
        envelope = self._envelope(
            sender,
            request.target_id,
            request.message_type,
            request.data_json,
            sender_instance_id=request.instance_id or None,
        )
        self._target(request.target_id).send_nowait(envelope)
        return pb.SendResponse(message_id=json.loads(envelope)["message_id"])

    async def request(self, peer: PeerConnection, request: pb.RequestRequest) -> pb.RequestResponse:
        self.unary_calls["Request"] += 1
        sender = self._agent(peer)
        if request.instance_id not in peer.state.get("instances", ()):
            raise Refusal(Reason.INSTANCE_NOT_BOUND)
        cid = secrets.token_urlsafe(12)
        envelope = self._envelope(
            sender,
            request.target_id,
            request.message_type,
            request.data_json,
            correlation_id=cid,
            expects_reply=True,
            sender_instance_id=request.instance_id,
        )
        self._target(request.target_id).send_nowait(envelope)
        self._pending[cid] = (sender, request.instance_id, request.target_id)
        return pb.RequestResponse(message_id=json.loads(envelope)["message_id"], correlation_id=cid)

    async def reply(self, peer: PeerConnection, request: pb.ReplyRequest) -> pb.ReplyResponse:
        self.unary_calls["Reply"] += 1
        sender = self._agent(peer)
        pending = self._pending.get(request.correlation_id)
        if pending is None or pending[2] != sender:
            raise Refusal(Reason.UNKNOWN_CORRELATION)
        del self._pending[request.correlation_id]
        requester, instance_id, _ = pending
        envelope = self._envelope(
            sender,
            requester,
            request.message_type,
            request.data_json,
            correlation_id=request.correlation_id,
            is_reply=True,
            sender_instance_id=request.instance_id or None,
            reply_to_instance_id=instance_id,
        )
        self._private_channel(requester, instance_id)[0].send_nowait(envelope)
        return pb.ReplyResponse(message_id=json.loads(envelope)["message_id"])

    # -- discovery and state -------------------------------------------------------------

    async def discover(
        self, peer: PeerConnection, request: pb.DiscoverRequest
    ) -> pb.DiscoverResponse:
        self.unary_calls["Discover"] += 1
        caller = self._agent(peer)
        wanted = set(request.capabilities)
        return pb.DiscoverResponse(
            agents=[
                pb.AgentRecord(
                    agent_id=agent,
                    capabilities=caps,
                    metadata_json="{}",
                    status="ACTIVE" if self._live[agent] else "INACTIVE",
                )
                for agent, caps in self.capabilities.items()
                if agent != caller and wanted <= set(caps)
            ]
        )

    async def get_state(
        self, peer: PeerConnection, request: pb.GetStateRequest
    ) -> pb.GetStateResponse:
        self.unary_calls["GetState"] += 1
        return pb.GetStateResponse(state=self.state.get(self._agent(peer), {}))

    async def update_state(
        self, peer: PeerConnection, request: pb.UpdateStateRequest
    ) -> pb.UpdateStateResponse:
        self.unary_calls["UpdateState"] += 1
        self.state.setdefault(self._agent(peer), {}).update(request.updates)
        return pb.UpdateStateResponse()

    async def reset_state(
        self, peer: PeerConnection, request: pb.ResetStateRequest
    ) -> pb.ResetStateResponse:
        self.unary_calls["ResetState"] += 1
        self.state.pop(self._agent(peer), None)
        return pb.ResetStateResponse()


@asynccontextmanager
async def open_base_server(
    pki: TestPKI, agents: Mapping[str, Sequence[str]]
) -> AsyncIterator[BaseServer]:
    """Run the stand-in on 127.0.0.1 (a free port) for the body of the ``async with``."""
    service = BaseServer(agents)
    limits = ServerLimits(
        max_message_bytes=1 << 20,
        max_concurrent_streams=100,
        max_connections=16,
        handshake_timeout=5.0,
        first_message_timeout=5.0,
        write_timeout=5.0,
    )
    grpc = GrpcServer(service, pki.server_ssl_context(), limits)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(grpc.serve, "127.0.0.1", 0)
        service.port = bound.port
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()
