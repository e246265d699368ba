"""The floor of this machine, measured in the same run as the scenarios it bounds.

``floor`` (run in the agents process) starts an echo server in a process of its own
(``python -m benchmarks.floor serve PKI_DIR``: the server's own gRPC layer,
``mas.server.grpc.GrpcServer``, with one streaming method that answers each frame with one
frame), connects to it over loopback mTLS with the SDK's own client stack, and times:

- ``echo_rtt``: one frame out and its answer back on an open stream, one at a time
  (median of ``rtt_n`` round trips);
- ``echo_server_cpu`` and ``echo_client_cpu``: the CPU time (user + system) each side
  spent per round trip of that loop: what the transport alone costs, so that a
  scenario's CPU per request can be set against it;
- ``echo_pipelined``: frames per second each way with ``pipeline_window`` frames in
  flight;
- ``fsync``: one 4 KiB append plus ``fdatasync`` in the repetition's directory (where the
  SQLite store's file lives in the other jobs), median of ``fsync_n``.

Nothing of ``mas``'s routing runs: this is what the transport and the disk cost alone, so a
scenario's figure divided by the ceiling these imply (``report.ceilings``) says how much of
what the machine allowed the server used, on a noisy day as on a quiet one.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import trio

from mas._proto import runtime_pb2 as pb
from mas.agent.client import Transport, open_channel, parse_server_addr
from mas.pki import client_ssl_context, server_ssl_context

from .procstat import cpu_seconds
from .scenarios import PAYLOAD_TEXT

FLOOR_ID: Final = "floor"  # the client certificate the floor's client presents
_START_TIMEOUT: Final = 20.0  # seconds for the echo server to say where it listens
_FSYNC_BLOCK: Final = b"\0" * 4096
_DATA_JSON: Final = '{"i": 0, "text": "' + PAYLOAD_TEXT + '"}'


class _EchoService:
    """One streaming method, ``Transport``: every frame read is answered by one Result."""

    def __init__(self) -> None:
        from mas.server.grpc import Method

        self.methods = {"Transport": Method(pb.ClientEvent, stream=self._echo)}

    async def admit(self, peer: Any) -> str:
        return FLOOR_ID

    async def _echo(self, peer: Any, rpc: Any) -> None:
        while True:
            batch = await rpc.receive_batch(64)
            if batch is None:
                return
            await rpc.send_many(
                [pb.ServerEvent(result=pb.Result(seq=f.send.seq, message_id="m")) for f in batch]
            )


async def _serve(pki_dir: Path) -> None:
    from mas.server.app import server_limits
    from mas.server.grpc import GrpcServer
    from mas.testing import make_config

    context = server_ssl_context(pki_dir / "ca.pem", pki_dir / "server.pem", pki_dir / "server.key")
    server = GrpcServer(_EchoService(), context, server_limits(make_config([])))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, "127.0.0.1", 0)
        print(f"listening on 127.0.0.1:{bound.port}", flush=True)
        await trio.sleep_forever()


def _frame(seq: int) -> pb.ClientEvent:
    return pb.ClientEvent(
        send=pb.StreamSend(seq=seq, target_id="echo", message_type="bench", data_json=_DATA_JSON)
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    address: str, pki_dir: Path, params: dict[str, Any], server_pid: int
) -> dict[str, Any]:
    context = client_ssl_context(
        pki_dir / "ca.pem", pki_dir / f"{FLOOR_ID}.pem", pki_dir / f"{FLOOR_ID}.key"
    )
    async with open_channel(parse_server_addr(address), context, connect_timeout=10) as channel:
        stream = await channel.open_stream("Transport", pb.ClientEvent, pb.ServerEvent)
        transport = Transport(stream, write_timeout=10)
        times: list[float] = []
        for seq in range(params["warmup"] + params["rtt_n"]):
            if seq == params["warmup"]:
                server_cpu, client_cpu = cpu_seconds(server_pid), _own_cpu()
            start = time.perf_counter()
            await transport.send(_frame(seq))
            answer = await transport.receive()
            if answer is None or answer.result.seq != seq:
                raise RuntimeError(f"the echo server answered {answer!r} to frame {seq}")
            if seq >= params["warmup"]:
                times.append(time.perf_counter() - start)
        server_cpu = (cpu_seconds(server_pid) - server_cpu) / params["rtt_n"]
        client_cpu = (_own_cpu() - client_cpu) / params["rtt_n"]
        total, window = params["pipelined_n"], params["pipeline_window"]
        room = trio.Semaphore(window)
        received = 0

        async def sender() -> None:
            for seq in range(total):
                await room.acquire()
                await transport.send(_frame(seq))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            while received < total:
                batch = await transport.receive_batch(64)
                if not batch:
                    raise RuntimeError("the echo server ended the stream")
                received += len(batch)
                for _ in batch:
                    room.release()
        elapsed = time.perf_counter() - start
        await transport.close()
    return {
        "echo_rtt": statistics.median(times),
        "echo_rtt_p99": statistics.quantiles(times, n=100, method="inclusive")[98],
        "echo_pipelined": total / elapsed,
        "echo_server_cpu": server_cpu,
        "echo_client_cpu": client_cpu,
    }


def _fsync_latency(directory: Path, count: int) -> float:
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fsync(fd)  # the file's creation, not part of the figure
        for _ in range(count):
            os.write(fd, _FSYNC_BLOCK)
            start = time.perf_counter()
            getattr(os, "fdatasync", os.fsync)(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


async def floor(pki_dir: Path, directory: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The floor's figures: echo round trip, pipelined echo rate, fsync latency (seconds)."""
    argv = [sys.executable, "-m", "benchmarks.floor", "serve", str(pki_dir)]
    async with trio.open_nursery() as nursery:
        run = functools.partial(trio.run_process, argv, stdout=subprocess.PIPE, check=False)
        process = await nursery.start(run)
        try:
            with trio.fail_after(_START_TIMEOUT):
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(1)
                    if not chunk:
                        raise RuntimeError("the echo server exited before listening")
                    line += chunk
            address = line.decode().rsplit(" ", 1)[-1].strip()
            result = await _measure(address, pki_dir, params, process.pid)
        finally:
            process.terminate()
    result["fsync"] = await trio.to_thread.run_sync(_fsync_latency, directory, params["fsync_n"])
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        print("usage: python -m benchmarks.floor serve PKI_DIR", file=sys.stderr)
        raise SystemExit(2)
    trio.run(_serve, Path(sys.argv[2]))
