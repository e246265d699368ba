"""The ``Agent`` base class: the user-facing SDK.

Subclass it, declare handlers with ``@Agent.on("type", model=Struct)``, and run it with
``await agent.run(task_status=...)`` under a nursery (or ``async with agent:``)::

    run()
    ├── connector     connect, Hello/Welcome, read frames, reconnect   (connector.py)
    ├── load state        GetState, before on_start
    └── handler nursery
        ├── dispatcher    inbox -> at most max_concurrency handler tasks
        ├── handlers      each under handler_timeout; outcome -> ack/nack/error reply
        └── on_start()    may send requests and await replies (the connector already reads)

Cancellation
    Cancelling ``run`` cancels the handlers, then calls ``on_stop`` shielded and bounded by
    ``shutdown_grace``, and cuts the connection within a bounded time. ``stop()`` instead drains
    gracefully: deliveries not yet started are nacked (retryable), running handlers (and an
    ``on_start`` still running, such as a producer loop) get ``shutdown_grace`` to finish
    before they are cancelled, ``on_stop`` runs, and the stream is closed.

Error handling
    ``run`` raises ``ConnectionClosedError`` when the first connection fails for
    ``connect_timeout``, ``UnauthenticatedError``/``PermissionDeniedError`` when the server
    refuses the agent's identity, ``CertificateError`` for bad TLS files, ``StateError`` when the
    stored state does not fit the model, and whatever ``on_start`` raises. A handler's exception
    never stops the agent: it is logged with its traceback and answered per ``handlers.decide``
    (the default ``on_message`` fallback is such a handler too). An exception in the connection
    task that is not a connection failure is a bug: ``run`` raises it, with its traceback, rather
    than reconnect (under ``mas run`` the supervisor's restart policy applies).
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Self, TypeVar, overload

import msgspec
import trio

from .._proto import runtime_pb2 as pb
from ..envelope import ERROR_REPLY_TYPE, Envelope
from ..errors import (
    ConnectionClosedError,
    MasError,
    RejectedError,
    RemoteError,
    ReplyValidationError,
    StateConflictError,
    StateError,
    remote_error,
)
from . import handlers as _handlers
from .backoff import Backoff
from .calls import Outbox
from .client import CLOSE_TIMEOUT, ServerAddress, parse_server_addr
from .connector import Connector, unwrap_groups
from .dispatch import Dispatcher
from .edits import Edit, apply_edits
from .handlers import HandlerSpec, collect_handlers, convert_payload
from .message import AgentMessage, DiscoveredAgent, TLSFiles, encode_object
from .state import StateModel, check_state_model, model_from_generic_bases

log = logging.getLogger("mas.agent")

StateT = TypeVar("StateT")
ModelT = TypeVar("ModelT")

# The window asked of the server when ``prefetch`` is 0 (the server grants at most what is
# asked, and its default, 64, is smaller). The inbox holds two windows: the deliveries of a
# connection being replaced may still be queued when the new one's arrive.
DEFAULT_WINDOW: Final = 1024
EDIT_ATTEMPTS: Final = 20  # edit_state tries before StateConflictError (races are per instance)
EDIT_BACKOFF_INITIAL: Final = 0.002  # seconds: ceiling of the first pause after a conflict
EDIT_BACKOFF_MAX: Final = 0.1  # seconds: ceiling of any pause (one update's round trip is ~1 ms)


class Agent(Generic[StateT]):
    """Base class of every agent (see the module docstring).

    Keyword arguments: ``server_addr`` ("host:port" or "[v6]:port"), ``tls`` (``TLSFiles`` or
    an ``ssl.SSLContext``; mTLS is mandatory), ``state_model``, ``max_concurrency``,
    ``handler_timeout``, ``prefetch`` (0 = the server's default window), ``rpc_timeout``,
    ``connect_timeout``, ``shutdown_grace``, ``heartbeat_interval`` (durations in seconds) and
    ``runtime_stop`` (injected by the runner; see ``stop_runtime``). Any other keyword is a
    ``TypeError``. A heartbeat goes out only after ``heartbeat_interval`` (default 120 s)
    without any other frame; it keeps idle connections open through middleboxes, and the
    server spends about 0.25 ms of CPU on each, so 10,000 idle agents cost about 2 % of a core.
    """

    on = staticmethod(_handlers.on)
    _handlers: ClassVar[dict[str, HandlerSpec]] = {}
    _declared_state_model: ClassVar[object] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = collect_handlers(cls)
        found, model = model_from_generic_bases(cls, Agent)
        if found:
            check_state_model(model)
            cls._declared_state_model = model

    def __init__(
        self,
        agent_id: str,
        *,
        server_addr: str = "127.0.0.1:50051",
        tls: TLSFiles | ssl.SSLContext | None = None,
        state_model: type | None = None,
        max_concurrency: int = 32,
        handler_timeout: float = 60.0,
        prefetch: int = 0,
        rpc_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        shutdown_grace: float = 10.0,
        heartbeat_interval: float = 120.0,
        runtime_stop: Callable[[], None] | None = None,
        **unknown: object,
    ) -> None:
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s): "
                f"{', '.join(sorted(unknown))}"
            )
        if not isinstance(agent_id, str) or not agent_id:
            raise TypeError(f"agent_id must be a non-empty string, got {agent_id!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if tls is not None and not isinstance(tls, TLSFiles | ssl.SSLContext):
            raise TypeError(f"tls must be TLSFiles or an ssl.SSLContext, got {type(tls)!r}")
        self._agent_id = agent_id
        self._instance_id = secrets.token_hex(8)
        self._address: ServerAddress = parse_server_addr(server_addr)
        self._tls = tls
        model = state_model if state_model is not None else type(self)._declared_state_model
        self._state_model = StateModel(model)
        self.state: StateT = self._state_model.defaults()
        self._max_concurrency = max_concurrency
        self._handler_timeout = _seconds("handler_timeout", handler_timeout)
        self._prefetch = prefetch
        self._rpc_timeout = _seconds("rpc_timeout", rpc_timeout)
        self._connect_timeout = _seconds("connect_timeout", connect_timeout)
        self._shutdown_grace = _seconds("shutdown_grace", shutdown_grace)
        self._heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval)
        self._runtime_stop = runtime_stop
        self._connector: Connector | None = None
        self._fatal: Exception | None = None  # what ended the connection task for good
        self._stop_requested = trio.Event()
        self._state_lock = trio.Lock()
        self._acknowledged: dict[str, str] = {}
        self._version: int | None = None
        self._unknown_keys_told: set[str] = set()  # stored keys the model lacks, warned once
        self._edits: list[Edit] = []  # edit_state calls waiting for the state lock
        self._serving: AbstractAsyncContextManager[Self] | None = None

    # -- identity -------------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def instance_id(self) -> str:
        """This object's instance id: fixed for its life, said in every Hello."""
        return self._instance_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._agent_id}/{self._instance_id}>"

    @property
    def _label(self) -> str:
        return f"agent {self._agent_id}/{self._instance_id}"

    # -- hooks ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Called once connected and with ``self.state`` loaded; may send and request."""

    async def on_stop(self) -> None:
        """Called while stopping, after the handlers finished and before the connector closes."""

    async def on_message(self, message: AgentMessage) -> None:
        """Fallback for message types without a handler: logs a warning; the message is acked.

        (A request that reaches this default gets an error reply, so its sender does not wait
        for its timeout.)
        """
        log.warning(
            "%s: no handler for message type %r from %r",
            self._label,
            message.message_type,
            message.sender_id,
        )

    # -- messaging ------------------------------------------------------------------------

    def _outbox(self) -> Outbox:
        if self._connector is None:
            raise ConnectionClosedError(f"{self._label} is not running (call run() first)")
        return self._connector.outbox

    async def send(
        self, target_id: str, message_type: str, data: Mapping[str, Any] | msgspec.Struct
    ) -> str:
        """Send a message; returns its message id once the server accepted it.

        Raises ``RejectedError`` subclasses for a refusal (``PermissionDeniedError``,
        ``RateLimitedError`` with ``retry_after``, ...), ``ConnectionClosedError`` if the
        connection is down past ``rpc_timeout`` or dropped before the server answered, and
        ``RequestTimeoutError`` if the server did not answer within ``rpc_timeout``.
        """
        data_json = encode_object(data)
        return await self._outbox().send(target_id, message_type, data_json)

    @overload
    async def request(
        self,
        target_id: str,
        message_type: str,
        data: Mapping[str, Any] | msgspec.Struct,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the public API (the seed's signature)
        model: None = None,
    ) -> AgentMessage: ...

    @overload
    async def request(
        self,
        target_id: str,
        message_type: str,
        data: Mapping[str, Any] | msgspec.Struct,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the public API (the seed's signature)
        model: type[ModelT],
    ) -> ModelT: ...

    async def request(
        self,
        target_id: str,
        message_type: str,
        data: Mapping[str, Any] | msgspec.Struct,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the public API (the seed's signature)
        model: type[Any] | None = None,
    ) -> Any:
        """Send a request and return the reply; ``timeout`` (seconds, > 0) bounds it all.

        Without ``model`` the reply is an ``AgentMessage`` (``reply.data`` is a dict).
        With ``model`` (a msgspec Struct, or any type ``msgspec.convert`` takes) the
        reply's data is validated as handlers validate requests, and the typed object
        is returned; a reply that does not fit raises ``ReplyValidationError`` naming
        the field.

        Raises ``RequestTimeoutError`` (saying whether the connection was down),
        ``RemoteHandlerError``/``RemoteValidationError`` for an error reply, and the errors of
        ``send``.
        """
        deadline = trio.current_time() + _seconds("timeout", timeout)
        data_json = encode_object(data)
        envelope = await self._outbox().request(target_id, message_type, data_json, deadline)
        if envelope.meta.error is not None:
            raise remote_error(envelope.meta.error.kind, envelope.meta.error.message)
        passed_through = _passed_through_error(envelope)
        if passed_through is not None:
            raise passed_through
        reply = AgentMessage(envelope)
        if model is None:
            return reply
        try:
            return convert_payload(model, reply.data)
        except msgspec.ValidationError as exc:
            name = getattr(model, "__qualname__", repr(model))
            raise ReplyValidationError(
                f"reply {reply.message_type!r} from {reply.sender_id!r} to request "
                f"{message_type!r} does not fit {name}: {exc}",
                reply,
            ) from exc

    async def discover(self, capabilities: Sequence[str] | None = None) -> list[DiscoveredAgent]:
        """The agents this one may send to (by its permissions) having all the given
        capabilities, each with its status (``ACTIVE`` or ``INACTIVE``), instance count and
        metadata."""
        wanted = list(capabilities or ())
        response = await self._outbox().unary(
            "Discover", pb.DiscoverRequest(capabilities=wanted), pb.DiscoverResponse
        )
        return [DiscoveredAgent.from_record(record) for record in response.agents]

    # -- state ----------------------------------------------------------------------------
    #
    # ``_acknowledged`` is the server's map as this instance last saw it, exact at
    # ``_version`` (None once that is not known: another writer may have come between).

    async def update_state(self, updates: Mapping[str, Any]) -> None:
        """Merge ``updates`` into the state and store every key they name.

        Validates against the state model first: a misfit raises ``StateError`` and nothing
        is sent. ``self.state`` changes only once the server stored the update. The keys
        named are always sent, so setting ``self.state`` first and then updating with the
        same values stores them. Last writer wins: for a change computed from the current
        value (a counter), use ``edit_state`` or two concurrent handlers may lose a write.
        """
        async with self._state_lock:
            new_state, to_send = self._state_model.plan_update(self.state, updates)
            if to_send:
                request = pb.UpdateStateRequest(updates=to_send, json_values=True)
                response = await self._state_call("UpdateState", request, pb.UpdateStateResponse)
                self._acknowledge(to_send, response.version)
            self.state = new_state

    async def edit_state(
        self,
        change: Callable[[StateT], StateT | Awaitable[StateT | None] | None],
        *,
        attempts: int = EDIT_ATTEMPTS,
    ) -> StateT:
        """Change the state without losing a concurrent write; return the state stored.

        ``change`` gets a fresh copy of the state as the server holds it and changes it in
        place, or returns the new state (it may be a plain or an ``async`` function; keep it
        short, and free of side effects other than on the state, because it may run more
        than once)::

            def count(state: Counter) -> None:
                state.handled += 1

            await self.edit_state(count)
            await self.edit_state(lambda s: msgspec.structs.replace(s, handled=s.handled + 1))

        The keys it changed are stored only if no one else wrote the state since it was
        read (a conditional update on the state's version); otherwise the state is read
        again and ``change`` runs again, after a short jittered pause, up to ``attempts``
        times in all. The edits of one instance's handlers never race each other: those
        waiting are applied in turn, each to the state the one before left, and stored
        with one conditional update (see ``mas.agent.edits``); instances and servers
        conflict only when they really race. Returns the state as stored (with the
        edits stored alongside).

        Raises ``StateConflictError`` when every attempt lost, ``StateError`` when the
        changed state misfits the model, and whatever ``change`` raises (nothing is stored
        then). A connection lost during the update raises ``ConnectionClosedError``
        without a retry: the update may have been stored, and running ``change`` again
        could apply it twice. Cancelled while its update is on the way, an edit may or
        may not have been stored; the edits that shared that update then fail with a
        ``StateError`` saying so.
        """
        if not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, got {attempts!r}")
        edit = Edit(change, attempts)
        self._edits.append(edit)
        try:
            async with self._state_lock:
                if not edit.finished:  # else a holder of the lock before us stored it
                    await self._store_edits(edit)
        except BaseException:
            if edit in self._edits:  # not taken yet: it must not be stored for no one
                self._edits.remove(edit)
            raise
        return edit.outcome()  # type: ignore[no-any-return]

    async def _store_edits(self, mine: Edit) -> None:
        """Store the queued edits, ``mine`` among them (see ``edits``); the lock is held.

        Returns once ``mine`` is finished; edits queued meanwhile are left to the next
        holder of the lock (each waits for it). A ``MasError`` (the connection failed, the
        stored state misfits) finishes every edit of the batch under way with it: whether
        that update was stored is unknown, so none is retried.
        """
        backoff = Backoff(initial=EDIT_BACKOFF_INITIAL, maximum=EDIT_BACKOFF_MAX)
        batch: list[Edit] = []
        sending = False  # an update of the batch is on the way: its outcome is unknown
        try:
            while not mine.finished:
                batch, self._edits = self._edits, []
                if self._version is None:
                    await self._load_state()
                acknowledged, version = self._acknowledged, self._version
                assert version is not None
                to_store, applied = await apply_edits(self._state_model, acknowledged, batch)
                if to_store:
                    request = pb.UpdateStateRequest(
                        updates=to_store, json_values=True, expected_version=version
                    )
                    sending = True
                    try:
                        response = await self._state_call(
                            "UpdateState", request, pb.UpdateStateResponse
                        )
                    except StateConflictError:
                        sending = False
                        self._version = None  # read again before the next attempt
                        retry = []
                        for edit in applied:
                            edit.attempts_left -= 1
                            if edit.attempts_left:
                                retry.append(edit)
                            else:
                                edit.error = StateConflictError(attempts=edit.attempts)
                        self._edits[:0] = retry  # first in line, before later edits
                        batch = []
                        if not mine.finished:
                            await trio.sleep(backoff.next_delay())
                        continue
                    sending = False
                    self._acknowledge(to_store, response.version)
                stored = {**acknowledged, **to_store}
                self.state = self._state_model.load(stored)
                for edit in applied:
                    edit.result = self._state_model.load(stored)
                batch = []
        except MasError as exc:
            self._version = None
            for edit in batch:
                if not edit.finished:
                    edit.error = exc
            if not mine.finished:
                mine.error = exc
            if mine in self._edits:
                self._edits.remove(mine)
        except BaseException:
            # Cancelled. Edits of the batch wait for the next holder of the lock, unless
            # their update was on the way: it may have been stored, so applying them
            # again could store them twice.
            others = [e for e in batch if e is not mine and not e.finished]
            if sending:
                self._version = None
                unknown = StateError(
                    f"{self._label}: the update carrying this edit_state was cancelled "
                    "on its way to the server (another edit's caller was cancelled); "
                    "it may or may not have been stored: refresh_state to see"
                )
                for edit in others:
                    edit.error = unknown
            else:
                self._edits[:0] = others
            if mine in self._edits:
                self._edits.remove(mine)
            raise

    async def refresh_state(self) -> None:
        """Reload the state from the server (``StateError`` names a key that misfits)."""
        async with self._state_lock:
            await self._load_state()

    async def _load_state(self) -> None:
        request = pb.GetStateRequest(json_values=True)
        response = await self._state_call("GetState", request, pb.GetStateResponse)
        stored = dict(response.state)
        for key in self._state_model.unknown_keys(stored):
            if key in self._unknown_keys_told:
                continue
            self._unknown_keys_told.add(key)
            log.warning(
                "%s: stored state key %r is not a field of %s, so it is not loaded (a renamed "
                "or removed field?); its value stays on the server: copy it to the new field "
                "with update_state, or drop it with reset_state",
                self._label,
                key,
                self._state_model.name,
            )
        self.state = self._state_model.load(stored)
        self._acknowledged, self._version = stored, response.version

    def _acknowledge(self, written: Mapping[str, str], version: int) -> None:
        """Record a write the server acknowledged at ``version``."""
        if self._version is not None and version == self._version + 1:
            self._acknowledged = {**self._acknowledged, **written}
            self._version = version
        else:  # someone else wrote in between: what we hold is not that version's state
            self._version = None

    async def reset_state(self) -> None:
        """Clear the stored state; ``self.state`` goes back to the model's defaults."""
        async with self._state_lock:
            response = await self._state_call(
                "ResetState", pb.ResetStateRequest(), pb.ResetStateResponse
            )
            self.state = self._state_model.defaults()
            self._acknowledged, self._version = {}, response.version

    async def _state_call(self, method: str, request: Any, response_type: Any) -> Any:
        try:
            return await self._outbox().unary(method, request, response_type)
        except RejectedError as exc:
            if exc.code in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"):
                raise StateError(f"{self._label}: the server refused {method}: {exc}") from exc
            raise

    # -- running --------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful stop (idempotent; see the module docstring)."""
        self._stop_requested.set()

    def stop_runtime(self) -> None:
        """Ask the whole runtime to stop (the runner's hook), or else just this agent."""
        if self._runtime_stop is not None:
            self._runtime_stop()
        else:
            self.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        if isinstance(self._tls, ssl.SSLContext):
            return self._tls
        if self._tls is None:
            raise ConnectionClosedError(
                f"{self._label}: no TLS identity; mTLS is mandatory, pass "
                "tls=TLSFiles(ca_path, cert_path, key_path) or an ssl.SSLContext"
            )
        from ..pki import client_ssl_context  # imported late: pki pulls in cryptography

        files = self._tls
        return client_ssl_context(Path(files.ca_path), Path(files.cert_path), Path(files.key_path))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, load state, call ``on_start``, report ready, and serve until stopped."""
        if self._connector is not None:
            raise RuntimeError(f"{self._label} is already running")
        ssl_context = self._ssl_context()
        window = self._prefetch or DEFAULT_WINDOW
        runner = Dispatcher(
            self,
            type(self)._handlers,
            max_concurrency=self._max_concurrency,
            handler_timeout=self._handler_timeout,
            inbox_size=2 * window,
            default_fallback=type(self).on_message is Agent.on_message,
        )
        connector = Connector(
            label=self._label,
            address=self._address,
            ssl_context=ssl_context,
            instance_id=self._instance_id,
            on_delivery=runner.deliver,
            prefetch=window,
            rpc_timeout=self._rpc_timeout,
            connect_timeout=self._connect_timeout,
            heartbeat_interval=self._heartbeat_interval,
        )
        runner.connector = connector
        self._connector, self._fatal = connector, None
        try:
            with unwrap_groups(), trio.CancelScope() as abort:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._run_connector, connector, abort)
                    await self._serve(connector, runner, task_status)
        except Exception:
            if self._fatal is None:
                raise
            # What failed with the connection (a call it was serving) is not the news.
        finally:
            self._connector = None
            self._stop_requested = trio.Event()
        if self._fatal is not None:
            raise self._fatal

    async def _run_connector(
        self,
        connector: Connector,
        abort: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await connector.run(task_status=task_status)
        except MasError as exc:
            if connector.generation == 0:
                raise  # never connected: nursery.start() raises it to run()
            log.error("%s: connection lost for good: %s", self._label, exc)
            self._fatal = exc
            abort.cancel()
        except Exception as exc:  # a bug in the connection task: the agent crashes with it
            if connector.generation == 0:
                raise
            self._fatal = exc
            abort.cancel()

    async def _serve(
        self,
        connector: Connector,
        runner: Dispatcher,
        task_status: trio.TaskStatus[None],
    ) -> None:
        started = False
        try:
            await self._load_state()
            async with trio.open_nursery() as handler_nursery:
                handler_nursery.start_soon(runner.dispatch, handler_nursery)
                await self._start_within_grace()
                started = True  # on_start returned, or a stop cut it short: on_stop runs
                log.debug("%s: started", self._label)
                task_status.started()
                await self._stop_requested.wait()
                log.debug("%s: stopping", self._label)
                await runner.drain(self._shutdown_grace)
                handler_nursery.cancel_scope.cancel()
        finally:
            if started:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self._shutdown_grace
                    await runner.call_on_stop()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2 * CLOSE_TIMEOUT
                await runner.nack_queued()
                await connector.aclose(CLOSE_TIMEOUT)
            log.debug("%s: stopped", self._label)

    async def _start_within_grace(self) -> None:
        """Run ``on_start``; a stop meanwhile gives it ``shutdown_grace``, then cancels it.

        ``on_start`` may loop (a producer sending until stopped): like a running handler,
        it gets the grace to finish, so a stop is never left waiting on it for ever.
        """
        async with trio.open_nursery() as watch:
            with trio.CancelScope() as scope:

                async def bound_by_stop() -> None:
                    await self._stop_requested.wait()
                    scope.deadline = trio.current_time() + self._shutdown_grace

                watch.start_soon(bound_by_stop)
                await self.on_start()
            watch.cancel_scope.cancel()
        if scope.cancelled_caught:
            log.warning(
                "%s: on_start was still running %g s after the stop: cancelled",
                self._label,
                self._shutdown_grace,
            )

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Self]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                self.stop()

    async def __aenter__(self) -> Self:
        """Run the agent in a nursery of its own; entered once it is ready.

        Leaving the block stops it gracefully (or cancels it, if the block raised).
        """
        if self._serving is not None:
            raise RuntimeError(f"{self._label} is already entered")
        serving = self._running()
        with unwrap_groups():
            agent = await serving.__aenter__()
        self._serving = serving
        return agent

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        serving, self._serving = self._serving, None
        if serving is None:
            raise RuntimeError(f"{self._label}: __aexit__ without __aenter__")
        with unwrap_groups():
            return await serving.__aexit__(*exc_info)
        return None  # not reached: unwrap_groups never swallows an exception


def _seconds(name: str, value: float) -> float:
    """A duration argument, which must be a positive, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _passed_through_error(envelope: Envelope) -> RemoteError | None:
    """The error reply of a handler, as a server without error replies passes it on.

    A mas server turns the ``mas.error`` reply of a failed handler into ``meta.error``; a
    server of the seed's system (mas-framework 0.4) delivers it as it was sent.
    """
    if envelope.message_type != ERROR_REPLY_TYPE:
        return None
    kind, message = envelope.data.get("kind"), envelope.data.get("message")
    if not isinstance(kind, str) or not isinstance(message, str):
        return None
    return remote_error(kind, message)
