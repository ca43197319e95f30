"""Optuna's gRPC storage proxy: the server of ``tuner storage serve``, and the client ``grpc://HOST:PORT`` opens.

Only the proxy talks to the database, through one pool of connections, however many workers there are.
Optuna's own protocol (``run_grpc_proxy_server``, ``GrpcStorageProxy``) carries the storage API; what
a worker needs beyond it travels in a second service on the same server, ``tuner.Storage``:

- Heartbeats. Optuna's protocol has none. ``RecordHeartbeat`` records one, ``StaleTrialIds`` finds the
  stale trials with the grace period stored with the study (the proxy serves studies with different
  settings; a study without stored settings, with the asking worker's), and the proxy records a trial's
  first heartbeat in the transaction that makes it RUNNING if its study has heartbeats on.
- The database's clock. ``DatabaseTime`` reads it, for ``tuner reap`` to judge a trial's age against
  the start the proxy's storage records with each trial it makes RUNNING.
- Outages. Optuna's client neither retries nor waits: a call made while the proxy is down or
  restarting fails. Here it is retried as a database call is (:func:`tuner.storage.retry.retrying`),
  for as long, while the proxy's own storage waits out a database outage behind it. A retried write may
  have been committed by a proxy that died before it replied, so the writes that create or move a
  trial name themselves with tokens the database keeps: a creation carries its token in its template
  (``REQUEST_ATTR``), a claim of a queued trial is ``Claim`` with the client's token, and a final state
  whose repeat finds it stored is accepted (:func:`tuner.storage.retry.final_write`). A repeat through a
  restarted proxy then finds its own earlier commit instead of making a second.

What does not cross: the study lock (:class:`tuner.storage.lock.SlotLock`) is a database session's,
and a worker of the proxy has none. Admission by trial number (:func:`tuner.study.loop._admitted`)
keeps the budget exact without it; trials asked for at the same moment past the budget are failed
before they run (``not_admitted``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from tuner._compat.optuna import CachedStorage
from tuner._compat.optuna_grpc import GrpcClientHooks, add_storage_service
from tuner.errors import first_line
from tuner.keys import REQUEST_ATTR
from tuner.storage.rdb import open_storage, request_template
from tuner.storage.retry import RETRY_S, RetriedCalls, TransientError, final_write, retry_deadline
from tuner.storage.urls import StorageError, is_proxy, mask, proxy_address

log = logging.getLogger(__name__)

DEFAULT_PORT = 13000
DEFAULT_THREADS = 10  # RPCs served at once; the database pool (5, and 10 more at peak) is sized to match
CONNECT_S = 5.0  # how long a client waits for the proxy to answer at start-up before calling it absent
STOP_GRACE_S = 5.0  # on SIGTERM, how long calls in progress may finish
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# the proxy's own heartbeat setting, for a study without stored settings (tuner.storage.rdb.heartbeat_settings):
# its trials get a first heartbeat when they are made RUNNING, and the asking worker gives the grace period
_PROXY_HEARTBEAT_S = 60
_SERVICE = "tuner.Storage"
# what a proxy that is down, restarting or gone mid-call answers: waiting may fix it
_TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# what Optuna's client turns into its own exceptions (KeyError, UpdateFinishedTrialError, ...)
_OPTUNA_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
                 grpc.StatusCode.INVALID_ARGUMENT)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    # a channel whose proxy went away tries again within a second, not after gRPC's default of up to 2 minutes
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _decode(data: bytes) -> Any:
    return json.loads(data)


class ProxyStorage(RetriedCalls, GrpcClientHooks):
    """Optuna's ``GrpcStorageProxy`` with heartbeats, retries through proxy outages
    (:class:`tuner.storage.retry.RetriedCalls`), and writes that recognise their own earlier commits (see
    the module docstring).

    Args:
        url: ``grpc://HOST:PORT``, as shown in messages.
        heartbeat_interval, grace_period: the study's heartbeat settings (Optuna's ``RDBStorage`` takes
            them too); ``None``: no heartbeats.
        retry_s: how long a call waits out an outage (:func:`tuner.storage.retry.retry_deadline`), each
            attempt included: an attempt that hangs is given up at that deadline.
    """

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 retry_s: float = RETRY_S) -> None:
        self.url = url
        self.heartbeat_interval, self.grace_period, self.retry_s = heartbeat_interval, grace_period, retry_s
        host, port = proxy_address(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    def open_channel(self, host: str, port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(f"{host}:{port}", options=_CHANNEL_OPTIONS)
        self._extension = {name: channel.unary_unary(f"/{_SERVICE}/{name}", request_serializer=_encode,
                                                     response_deserializer=_decode)
                           for name in ("RecordHeartbeat", "StaleTrialIds", "Claim", "DatabaseTime")}
        return channel

    def wrap_stub(self, stub: Any) -> Any:
        return _Stub(stub, self._invoke)

    def _invoke(self, rpc: Callable[..., Any], what: str, request: Any) -> Any:
        """One call to the proxy, given up at the deadline of the retried call it is part of; a failure that
        waiting may fix is raised as :class:`tuner.storage.retry.TransientError`, one the proxy reports as a
        :class:`tuner.storage.urls.StorageError` with its message."""
        left = self.time_left()
        timeout = self.retry_s if left is None else max(0.1, left)
        try:
            return rpc(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            reason = f"{code.name}: {first_line(err.details() or '', 'no details')}"
            if code in _TRANSIENT_CODES:
                raise TransientError(f"storage proxy {mask(self.url)}: {reason}") from None
            if code in _OPTUNA_CODES:
                raise
            raise StorageError(f"storage proxy {mask(self.url)}: {what} failed: {reason}") from None

    def _call(self, method: str, request: dict[str, Any]) -> Any:
        try:
            return self._invoke(self._extension[method], method, request)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise KeyError(err.details()) from None
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise UpdateFinishedTrialError(err.details()) from None
            raise

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Optuna's, retried; the trial's template names the creation, so that a repeat after a lost reply
        returns the trial made before (:meth:`tuner.storage.rdb.ResilientRDBStorage.create_trial`).

        Every attempt asks the server to look the name up first, the first one too: a handler of a proxy
        that was stopped may still be retrying an attempt after a restarted proxy served the next one."""
        named = template_trial is not None and REQUEST_ATTR in template_trial.system_attrs
        template = template_trial if named else request_template(template_trial, uuid.uuid4().hex, lookup=True)

        def attempt() -> int:
            return int(GrpcStorageProxy.create_new_trial(self, study_id, template))

        return int(self.retried(attempt, "create_new_trial")())

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        """Optuna's, retried; taking up a queued trial carries a token, and a final state whose repeat finds
        it stored is accepted (see the module docstring)."""
        if state == TrialState.RUNNING:
            token = uuid.uuid4().hex
            return bool(self.retried(lambda: self._call("Claim", {"trial_id": trial_id, "token": token}),
                                     "claim")()["claimed"])
        attempt = final_write(lambda: GrpcStorageProxy.set_trial_state_values(self, trial_id, state, values),
                              lambda: GrpcStorageProxy.get_trial(self, trial_id), state, values, self.url, trial_id)
        return bool(self.retried(attempt, "set_trial_state_values")())

    def record_heartbeat(self, trial_id: int) -> None:
        self._call("RecordHeartbeat", {"trial_id": trial_id})

    def stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval  # Optuna's default
        return [int(i) for i in self._call("StaleTrialIds", {"study_id": study_id, "grace_period": grace})["ids"]]

    def database_time(self) -> float | None:
        """The clock of the proxy's database (:meth:`tuner.storage.rdb.ResilientRDBStorage.database_time`)."""
        now = self._call("DatabaseTime", {})["now"]
        return None if now is None else float(now)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None  # tuner's worker fails and retries stale trials itself (tuner.study.recovery)


class _Stub:
    """Optuna's client stub, each call made through :meth:`ProxyStorage._invoke`."""

    def __init__(self, stub: Any, invoke: Callable[[Callable[..., Any], str, Any], Any]) -> None:
        self._stub, self._invoke = stub, invoke

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        rpc = getattr(self._stub, name)
        return lambda request: self._invoke(rpc, name, request)


def open_proxy(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None) -> ProxyStorage:
    """A client of the storage proxy at ``grpc://HOST:PORT``; a proxy that does not answer within
    ``CONNECT_S`` is refused at once, as an unreachable database is (more often a wrong address than an
    outage)."""
    storage = ProxyStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                           retry_s=retry_deadline(heartbeat_interval, grace_period))
    try:
        grpc.channel_ready_future(storage.channel).result(timeout=CONNECT_S)
    except grpc.FutureTimeoutError:
        storage.close()
        raise StorageError(f"cannot open storage {mask(url)}: no storage proxy answered there within "
                           f"{CONNECT_S:.0f} s; start one with tuner storage serve --port {storage.port}, "
                           "the database's URL in $TUNER_STORAGE") from None
    return storage


class _ProxyCache(CachedStorage):
    """Optuna's caching layer, for a proxy that meets trials it never read.

    Optuna's sets a parameter only on a trial it has read or created itself, and fails with ``KeyError``
    otherwise: a proxy restarted mid-study, or one of several, would fail a worker's trial made before
    or elsewhere. Such a trial's parameter is set by the storage beneath, which checks it against the
    study's other trials itself."""

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        if not self.has_read(trial_id):
            self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)


class _Extension:
    """The ``tuner.Storage`` service: what a worker needs beyond Optuna's protocol (see the module docstring)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage  # a ResilientRDBStorage

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"RecordHeartbeat": self.record_heartbeat, "StaleTrialIds": self.stale_trial_ids,
                   "Claim": self.claim, "DatabaseTime": self.database_time}
        return grpc.method_handlers_generic_handler(_SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(method, request_deserializer=_decode,
                                                      response_serializer=_encode)
            for name, method in methods.items()})

    def record_heartbeat(self, request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        self.storage.record_heartbeat(int(request["trial_id"]))
        return {}

    def stale_trial_ids(self, request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        return {"ids": self.storage.stale_trial_ids(int(request["study_id"]), int(request["grace_period"]))}

    def database_time(self, request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        return {"now": self.storage.database_time()}

    def claim(self, request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        try:
            return {"claimed": self.storage.claim(int(request["trial_id"]), str(request["token"]))}
        except KeyError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except UpdateFinishedTrialError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        raise AssertionError("unreachable: abort raises")


def open_backend(url: str) -> Any:
    """The database storage a proxy serves: its schema created, its calls waiting out outages for
    ``RETRY_S``, a first heartbeat recorded with each trial it makes RUNNING in a study with heartbeats on."""
    if is_proxy(url):
        raise StorageError(f"storage {mask(url)} is a proxy; a proxy serves a database: give --storage "
                           "postgresql://..., mysql+pymysql://... or sqlite:///...")
    return open_storage(url, heartbeat_interval=_PROXY_HEARTBEAT_S, retry_s=RETRY_S)


def make_server(backend: Any, host: str, port: int, threads: int = DEFAULT_THREADS) -> tuple[grpc.Server, int]:
    """A proxy server over ``backend`` (:func:`open_backend`), not yet started, and the port it bound
    (``port`` 0: any free one)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy"))
    # Optuna's caching layer, as Optuna's documentation advises: a worker's read of the study's trials
    # reads only the trials that changed since the proxy last looked
    add_storage_service(server, _ProxyCache(backend))
    server.add_generic_rpc_handlers((_Extension(backend).handler(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise StorageError(f"cannot listen on {host}:{port}: the address is in use or not this machine's")
    return server, bound


def serve(url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = DEFAULT_THREADS,
          on_ready: Callable[[int], None] | None = None) -> None:
    """Run the storage proxy for the database at ``url`` until SIGTERM or SIGINT, then stop cleanly: no new
    calls, those in progress given ``STOP_GRACE_S`` to finish.

    It has no authentication or encryption: anyone who reaches the port reads and writes every study in
    the database. It listens on this machine only unless ``host`` says otherwise, and warns then.
    ``on_ready`` is called with the bound port once it listens.
    """
    backend = open_backend(url)
    server, bound = make_server(backend, host, port, threads)
    if host not in LOCAL_HOSTS:
        log.warning("the storage proxy listens on %s: anyone who reaches port %d there can read and write every "
                    "study in %s (no authentication, no encryption); keep it on a private network", host, bound,
                    mask(url))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        log.debug("storage proxy for %s listening on %s:%d", mask(url), host, bound)
        if on_ready is not None:
            on_ready(bound)
        stop.wait()
        log.info("stopping the storage proxy: calls in progress have %.0f s to finish", STOP_GRACE_S)
        server.stop(STOP_GRACE_S).wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        backend.engine.dispose()
