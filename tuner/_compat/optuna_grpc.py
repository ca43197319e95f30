"""Optuna's private names for its gRPC storage proxy that tuner uses (see :mod:`tuner._compat`); they need
grpcio, which only the proxy does."""

from __future__ import annotations

from typing import Any

import grpc
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.storages._heartbeat import BaseHeartbeat


class GrpcClientHooks(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC storage client, whose channel and stub a subclass makes (:meth:`open_channel`,
    :meth:`wrap_stub`): Optuna opens its channel with fixed options and keeps the stub private. It takes part
    in Optuna's heartbeat protocol (``BaseHeartbeat``, private), its stale-trial query named
    :meth:`stale_trial_ids`."""

    def _setup(self) -> None:  # Optuna's __init__ and __setstate__ open the channel here
        self._channel = self.open_channel(self._host, self._port)
        self._stub = self.wrap_stub(api_pb2_grpc.StorageServiceStub(self._channel))
        self._cache = GrpcClientCache(self._stub)

    def open_channel(self, host: str, port: int) -> grpc.Channel:
        return grpc.insecure_channel(f"{host}:{port}", options=[("grpc.max_receive_message_length", -1)])

    def wrap_stub(self, stub: Any) -> Any:
        return stub

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    @property
    def port(self) -> int:
        return self._port

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        raise NotImplementedError


def add_storage_service(server: grpc.Server, storage: BaseStorage) -> None:
    """Serve Optuna's storage protocol for ``storage`` on ``server``. Optuna's public ``run_grpc_proxy_server``
    builds and runs a server of its own, to which no second service can be added."""
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
