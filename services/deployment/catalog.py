"""The registry, as the deployment service sees it: approved models, over gRPC."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from pydantic import SecretStr

from llmops.v1 import registry_pb2, registry_pb2_grpc
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.identity import Identity, service_metadata
from shared.observability import request_id_metadata

from .domain import ModelSnapshot


class RegistryCatalog:
    def __init__(self, address: str, *, service_token: SecretStr | None = None, timeout_s: float = 10.0) -> None:
        self._credential = service_metadata(service_token)
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout_s

    async def get_model(self, model_id: str, *, actor: Identity) -> tuple[ModelSnapshot, str]:
        """The model and its catalog status, asked with the caller's identity."""
        try:
            model = await self._stub.GetModel(registry_pb2.GetModelRequest(id=model_id),
                                              metadata=actor.metadata() + self._credential + request_id_metadata(),
                                              timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"model {model_id} not found in the catalog", reason="MODEL_NOT_FOUND") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"modelId: {exc.details()}", reason="INVALID_MODEL_ID") from exc
            raise Unavailable(f"the model registry is unavailable ({exc.code().name}); try again",
                              reason="REGISTRY_UNAVAILABLE") from exc
        snapshot = ModelSnapshot(
            id=model.id, name=model.name, version=model.version, type=model.type, runtime=model.runtime,
            artifact_uri=model.artifact_uri, metadata=json_format.MessageToDict(model.metadata))
        return snapshot, model.status

    async def close(self) -> None:
        await self._channel.close()
