"""A bare protocol client for tests that must misbehave (spoof, replay, flood).

It speaks the wire protocol directly through purerpc's stream objects, with
none of the SDK's checks, so tests can send what a hostile client would.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import purerpc

from mas._proto import runtime_pb2 as pb
from mas._purerpc import open_channel, release_stream, write_messages

SERVICE = "mas.runtime.v1.RuntimeService"


class CallFailed(Exception):
    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


def _status(stream: Any) -> CallFailed:
    event = stream.end_stream_event
    status = getattr(event, "status", None)
    if status is None:
        return CallFailed("UNKNOWN", "no status")
    return CallFailed(status.status_code.name, status.status_message)


class RawClient:
    def __init__(self, channel: Any) -> None:
        self.client = purerpc.Client(SERVICE, channel)

    async def unary(self, method: str, request: Any, response_type: Any) -> Any:
        stream = await self.client.rpc(method, type(request), response_type)
        try:
            await stream.send_message(request)
            await stream.close()
            response = await stream.receive_message()
            if response is None:
                raise _status(stream)
            # Drain the trailers so the stream is finished.
            if await stream.receive_message() is not None:
                raise AssertionError("more than one response")
            return response
        finally:
            release_stream(stream)

    async def transport(self) -> RawSession:
        stream = await self.client.rpc("Transport", pb.ClientEvent, pb.ServerEvent)
        return RawSession(stream)


class RawSession:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.seq = 0

    async def send(self, **event: Any) -> None:
        await self.stream.send_message(pb.ClientEvent(**event))

    async def send_together(self, events: list[pb.ClientEvent]) -> None:
        """Write several frames in one HTTP/2 DATA frame (so one TLS record)."""
        await write_messages(self.stream, events)

    def frame(self, kind: str, **fields: Any) -> tuple[int, pb.ClientEvent]:
        """The next stream fast-path frame of ``kind`` and its sequence number."""
        self.seq += 1
        message = {"send": pb.StreamSend, "request": pb.StreamRequest, "reply": pb.StreamReply}[
            kind
        ]
        return self.seq, pb.ClientEvent(**{kind: message(seq=self.seq, **fields)})

    async def receive(self) -> pb.ServerEvent:
        event = await self.stream.receive_message()
        if event is None:
            raise _status(self.stream)
        return event

    async def hello(self, instance_id: str = "", **extra: Any) -> pb.Welcome:
        await self.send(hello=pb.Hello(instance_id=instance_id, **extra))
        event = await self.receive()
        assert event.WhichOneof("event") == "welcome", event
        return event.welcome

    async def next_delivery(self) -> pb.Delivery:
        while True:
            event = await self.receive()
            if event.WhichOneof("event") == "delivery":
                return event.delivery
            if event.WhichOneof("event") == "deliveries":
                assert len(event.deliveries.deliveries) == 1
                return event.deliveries.deliveries[0]

    async def call(self, kind: str, **fields: Any) -> pb.Result:
        """Send a stream fast-path frame and return its Result."""
        seq, frame = self.frame(kind, **fields)
        await self.stream.send_message(frame)
        while True:
            event = await self.receive()
            if event.WhichOneof("event") == "result" and event.result.seq == seq:
                return event.result

    async def close(self) -> None:
        await self.stream.close()


@asynccontextmanager
async def raw_client(port: int, context: ssl.SSLContext) -> AsyncIterator[RawClient]:
    async with open_channel("127.0.0.1", port, context) as channel:
        yield RawClient(channel)


@asynccontextmanager
async def sessions(server: Any, pki: Any, *agent_ids: str) -> AsyncIterator[list[RawSession]]:
    """One connection and one Transport session per agent id (instance ``<id>1``), said Hello."""
    async with AsyncExitStack() as stack:
        opened = []
        for agent_id in agent_ids:
            client = await stack.enter_async_context(
                raw_client(server.address.port, pki.client_ssl_context(agent_id))
            )
            session = await client.transport()
            await session.hello(f"{agent_id}1")
            opened.append(session)
        yield opened
