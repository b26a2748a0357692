"""The doubles the tests share: a serving runtime for control-plane tests (no Triton), a Triton
replica and a deployment service's route watch for the router's tests, and the Kubernetes API
mock (kmock taught server-side apply) with the real client pointed at it."""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import grpc
import kmock
import numpy as np
from kubernetes import client as k8s
from tritonclient.grpc import service_pb2, service_pb2_grpc

from deployment.runtimes.base import Health, ReplicaState, RuntimeFailure, RuntimeStatus, ServingSpec
from llmops.v1 import deployment_pb2, deployment_pb2_grpc, experiment_pb2, experiment_pb2_grpc
from router.backends import Chunk, Sampling
from router.experiments import ExperimentTable
from router.outcomes import Outcome


class FakeRuntime:
    def __init__(self) -> None:
        self.specs: dict[str, ServingSpec] = {}
        self.applied: list[tuple[str, int]] = []
        # Endpoint name -> the failure its next apply raises. By name, not "the next apply": one runtime
        # serves every test of a database, and another endpoint's controller may apply first.
        self.fail_next: dict[str, str] = {}
        self.status_errors: list[Exception] = []  # raised by the next status() calls, one each
        self.apply_delay_s = 0.0
        self.on_change: Callable[[str], None] | None = None
        # Where every replica answers (a FakeTriton's address), for a test that sends requests to them;
        # None: addresses nothing listens on.
        self.replica_address: str | None = None

    async def start(self) -> None:
        pass

    async def apply(self, spec: ServingSpec) -> None:
        await asyncio.sleep(self.apply_delay_s)
        if spec.name in self.fail_next:
            raise RuntimeFailure(self.fail_next.pop(spec.name))
        self.specs[spec.endpoint_id] = spec
        self.applied.append((spec.endpoint_id, spec.revision))

    async def remove(self, endpoint_id: str) -> None:
        self.specs.pop(endpoint_id, None)

    async def status(self, endpoint_id: str) -> RuntimeStatus:
        if self.status_errors:
            raise self.status_errors.pop(0)
        spec = self.specs.get(endpoint_id)
        if spec is None:
            return RuntimeStatus(health=Health.DEPLOYING, reason="", desired_replicas=0, ready_replicas=0)
        replicas = tuple(ReplicaState(id=f"fake-{i}", grpc_address=self.replica_address or f"127.0.0.1:{9000 + i}",
                                      ready=True, revision=spec.revision) for i in range(spec.min_replicas))
        return RuntimeStatus(health=Health.HEALTHY, reason="", desired_replicas=spec.min_replicas,
                             ready_replicas=spec.min_replicas, triton_model="llm", replicas=replicas)

    async def close(self) -> None:
        pass


# ------------------------------------------------------------------ a Triton replica and the route watch

EMBEDDING_DIM = 4  # what FakeTriton's embedding model answers


def add_output(response: service_pb2.ModelInferResponse, name: str, values: list, datatype: str) -> None:
    if datatype == "BYTES":
        encoded = [v.encode() for v in values]
        raw = b"".join(struct.pack("<I", len(v)) + v for v in encoded)
        shape = [len(values)]
    else:
        array = np.array(values, dtype={"INT32": np.int32, "FP32": np.float32}[datatype])
        raw, shape = array.tobytes(), list(array.shape)
    response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)


def token_response(request: service_pb2.ModelInferRequest, text: str, *, final: bool = False,
           counts: bool = True) -> service_pb2.ModelStreamInferResponse:
    response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
    add_output(response, "text_output", [text], "BYTES")
    if final and counts:
        add_output(response, "prompt_tokens", [3], "INT32")
        add_output(response, "completion_tokens", [3], "INT32")
        add_output(response, "finish_reason", ["stop"], "BYTES")
    response.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=response)


def model_died(model: str) -> str:
    """What Triton's python backend answers once the model's stub process died."""
    return f"Stub process '{model}_0_0' is not healthy."


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """One replica: `behaviour` says whether it answers or how it fails."""

    def __init__(self, behaviour: str = "answers") -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.release = asyncio.Event()  # lets a stalled generation finish
        self.calls: list[str] = []  # how each stream ended: "ok" or "cancelled"
        self.prompts: list[str] = []  # each generation's text_input, as the router rendered it
        self.linger_s = 0.0  # how long the call stays open after its last response, as Triton's may
        self.inputs: frozenset[str] | None = None  # the inputs its model declares (None: any); Triton refuses others

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        try:
            async for response in self._answer(request_iterator):
                yield response
            await asyncio.sleep(self.linger_s)
        except asyncio.CancelledError:
            self.calls.append("cancelled")
            raise
        self.calls.append("ok")

    async def _answer(self, request_iterator):  # noqa: ANN001, ANN202
        async for request in request_iterator:
            self.requests += 1
            self.prompts += [i.contents.bytes_contents[0].decode() for i in request.inputs if i.name == "text_input"]
            behaviour = self.behaviour
            undeclared = [i.name for i in request.inputs if self.inputs is not None and i.name not in self.inputs]
            if undeclared:  # Triton 2.51's words, before the model sees the request
                yield service_pb2.ModelStreamInferResponse(
                    error_message=f"unexpected inference input '{undeclared[0]}' for model '{request.model_name}'")
            elif behaviour == "model_died":
                yield service_pb2.ModelStreamInferResponse(error_message=model_died(request.model_name))
            elif behaviour == "dies_with_the_request":  # the llama.cpp model says it has it, then its process dies
                if request.parameters["report_start"].bool_param:
                    yield service_pb2.ModelStreamInferResponse(infer_response=service_pb2.ModelInferResponse(
                        model_name=request.model_name, id=request.id))
                yield service_pb2.ModelStreamInferResponse(error_message=model_died(request.model_name))
            elif behaviour == "rejects":  # INVALID_ARG from the model: a stream carries only the message
                yield service_pb2.ModelStreamInferResponse(error_message="INVALID_ARG: input max_tokens must be "
                                                                         "at least 1, got 0")
            elif behaviour == "breaks_contract":  # a final response without the token counts
                yield token_response(request, "Hello", final=True, counts=False)
            else:
                yield token_response(request, "Hello")
                if behaviour == "dies_after_first_token":
                    yield service_pb2.ModelStreamInferResponse(error_message=model_died(request.model_name))
                    continue
                if behaviour == "stalls_after_first_token":
                    await self.release.wait()
                yield token_response(request, " world", final=True)

    async def ModelInfer(self, request, context):  # noqa: N802
        self.requests += 1
        if self.behaviour == "model_died":
            await context.abort(grpc.StatusCode.INTERNAL, model_died(request.model_name))
        if self.behaviour == "rejects":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input text holds no strings")
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        # One row, [1, n], as the batching model takes them: n strings, or n token-id arrays' lengths.
        inputs = {i.name: i for i in request.inputs}
        count = (inputs.get("text") or inputs["token_id_lengths"]).shape[-1]
        add_output(response, "embedding", [[[0.5] * EMBEDDING_DIM] * count], "FP32")
        add_output(response, "token_count", [[3] * count], "INT32")
        return response


class FakeDeployment(deployment_pb2_grpc.DeploymentServiceServicer):
    """WatchEndpoints as the deployment service streams it: a snapshot, then each change."""

    def __init__(self, endpoints: list[deployment_pb2.RoutedEndpoint]) -> None:
        self.endpoints = endpoints
        self.watches = 0
        self.changes: asyncio.Queue[deployment_pb2.WatchEndpointsResponse] = asyncio.Queue()

    async def WatchEndpoints(self, request, context):  # noqa: N802
        self.watches += 1
        yield deployment_pb2.WatchEndpointsResponse(kind="snapshot", endpoints=self.endpoints)
        while True:
            yield await self.changes.get()


def routed(name: str, replicas: list[str], model_type: str = "chat") -> deployment_pb2.RoutedEndpoint:
    return deployment_pb2.RoutedEndpoint(
        endpoint=deployment_pb2.Endpoint(id=f"id-{name}", name=name, environment="dev", status="healthy"),
        triton_model="llm" if model_type == "chat" else "e5",
        model=deployment_pb2.RevisionModel(name=f"{name}-model", version="v1", type=model_type),
        replicas=[deployment_pb2.Replica(id=f"replica-{i}", grpc_address=address, ready=True)
                  for i, address in enumerate(replicas)])


def snapshot(*endpoints: deployment_pb2.RoutedEndpoint) -> deployment_pb2.WatchEndpointsResponse:
    return deployment_pb2.WatchEndpointsResponse(kind="snapshot", endpoints=list(endpoints))


class RecordingPool:
    """The router's replica pool without replicas: answers "ok" from the first replica it may pick, and
    keeps where each generation went and its prompt."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.prompts: list[str] = []

    def pick(self, addresses, exclude, *, slots=1, queue=None, queue_budget=0.0):  # noqa: ANN001, ANN201
        return next((a for a in addresses if a not in exclude), None)

    async def generate(self, address: str, model: str, prompt: str, sampling: Sampling,
                       request_id: str) -> AsyncIterator[Chunk]:
        self.addresses.append(address)
        self.prompts.append(prompt)
        yield Chunk("ok", final=True, prompt_tokens=len(prompt), completion_tokens=1, finish_reason="stop")


class RecordedOutcomes:
    """The router's outcome sink, keeping what it was given."""

    def __init__(self) -> None:
        self.recorded: list[Outcome] = []

    def record(self, outcome: Outcome) -> None:
        self.recorded.append(outcome)

def no_experiments() -> ExperimentTable:
    """The router's experiment table once an empty snapshot arrived: a request never waits for one (a
    table without it holds each request up to SYNC_GRACE_S after the router starts)."""
    table = ExperimentTable()
    table.apply(experiment_pb2.WatchExperimentsResponse(kind="snapshot"))
    return table

class FakeExperiments(experiment_pb2_grpc.ExperimentServiceServicer):
    """WatchExperiments with no experiment running: the router serves every prompt as sent."""

    async def WatchExperiments(self, request, context):  # noqa: N802
        yield experiment_pb2.WatchExperimentsResponse(kind="snapshot")
        await asyncio.Event().wait()  # open until the router goes


# ------------------------------------------------------------------ the Kubernetes API mock

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")
INGRESSES = kmock.resource("networking.k8s.io", "v1", "ingresses")
ENDPOINT_SLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
NETWORK_POLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
SECRETS = kmock.resource("", "v1", "secrets")
RESOURCES = {"Deployment": DEPLOYMENTS, "Service": SERVICES, "HorizontalPodAutoscaler": HPAS,
             "Ingress": INGRESSES, "EndpointSlice": ENDPOINT_SLICES, "Lease": LEASES,
             "NetworkPolicy": NETWORK_POLICIES, "Secret": SECRETS}
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")
HPA_FIELD_MANAGER = "kube-controller-manager"  # the HorizontalPodAutoscaler controller's scale updates



FieldPath = tuple[str, ...]
IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}  # never owned


def leaves(obj: dict[str, Any], prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    """The fields a manager can own, path -> value: maps are walked, lists and scalars are atomic."""
    found: dict[FieldPath, Any] = {}
    for key, value in obj.items():
        path = (*prefix, key)
        if path in IDENTITY or path == ("status",) or (prefix == ("metadata",) and key in SERVER_FIELDS):
            continue
        if isinstance(value, dict) and value:
            found.update(leaves(value, path))
        else:
            found[path] = value
    return found


def put(obj: dict[str, Any], path: FieldPath, value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            obj[key] = {}
        obj = obj[key]
    obj[path[-1]] = copy.deepcopy(value)


def drop(obj: dict[str, Any], path: FieldPath) -> None:
    """Remove a field, and the maps that removing it leaves empty."""
    parents = []
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            return
        parents.append((obj, key))
        obj = obj[key]
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):
        if parent[key]:
            break
        del parent[key]


def merge_patch(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch (null removes)."""
    for key, value in patch.items():
        if value is None:
            obj.pop(key, None)
        elif isinstance(value, dict) and isinstance(obj.get(key), dict):
            merge_patch(obj[key], value)
        else:
            obj[key] = copy.deepcopy(value)
    return obj


def fields_v1(paths: set[FieldPath]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock 0.8's emulator, taught server-side apply and field ownership as a real API server does them.

    kmock treats PATCH as a merge into an existing object and answers an apply to an
    object that does not exist yet with an error, where a real API server creates it.
    Here, per object, every field (maps walked, lists atomic) is owned by the managers
    that set it, shown in metadata.managedFields (FieldsV1), and:

    * an apply (Content-Type application/apply-patch+yaml) creates the object when
      absent (201); otherwise (200) it sets the applied fields and removes the ones its
      manager applied before and omits now, unless another manager owns them too. A
      field another manager owns with a different value is a 409 Conflict, unless
      force=true, which takes it over;
    * a merge patch of the object or of its scale subresource (as the HPA scales) is an
      Update: the fields it changes become its manager's, taken from every other one.

    Server-owned fields (uid, resourceVersion, generation, creationTimestamp, status)
    are kept; generation goes up when the spec changes, as the API server does.
    Everything else (status patches, get, list, delete) is kmock's own behaviour.
    """

    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.owners: dict[tuple[Any, str, str], dict[tuple[str, str], set[FieldPath]]] = {}

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.CREATE and request.resource is not None:
            return await self._create(request)
        if request.method == "PUT" and request.name and request.subresource is None:
            return await self._replace(request)
        if request.action == kmock.action.UPDATE and request.name and request.subresource in (None, "scale"):
            content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
            if content_type.startswith("application/apply-patch"):
                if request.subresource is None:
                    return await self._server_side_apply(request)
            else:
                return await self._update(request)
        return await super()._handle(request)

    def _live(self, key: tuple[Any, str, str]) -> Any:
        return self.objects[key] if key in self.objects and not self.objects[key].deleted else None

    async def _server_side_apply(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        manager = request.params.get("fieldManager")
        if not manager:
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message="fieldManager is required for apply requests")
        applied = copy.deepcopy(request.data)
        meta = applied.setdefault("metadata", {})
        if meta.get("name") != request.name or meta.get("namespace", request.namespace) != request.namespace:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="name/namespace mismatch")
        key = (request.resource, request.namespace, request.name)
        fields = leaves(applied)
        async with self._lock:
            current = self._live(key)
            if current is None:
                self.owners[key] = {(manager, "Apply"): set(fields)}
                return await self._commit(key, None, applied, request)
            old = json.loads(json.dumps(current.raw))
            owners = self.owners.setdefault(key, {})
            values = leaves(old)
            conflicts = {(path, owner) for owner, paths in owners.items() if owner != (manager, "Apply")
                         for path in paths & fields.keys() if values.get(path) != fields[path]}
            if conflicts and request.params.get("force") != "true":
                raise kmock.KubernetesError(status=409, reason="Conflict", message=(
                    f"Apply failed with {len(conflicts)} conflict(s): " + "; ".join(
                        f'conflict with "{owner[0]}": .{".".join(path)}' for path, owner in sorted(conflicts))))
            for path, owner in conflicts:
                owners[owner].discard(path)
            others = set().union(*(paths for owner, paths in owners.items() if owner != (manager, "Apply")))
            new = copy.deepcopy(old)
            for path in owners.get((manager, "Apply"), set()) - fields.keys() - others:
                drop(new, path)
            for path, value in fields.items():
                put(new, path, value)
            if request.resource == SERVICES:
                self._check_cluster_ip(request.name, old, new)
            owners[(manager, "Apply")] = set(fields)
            return await self._commit(key, old, new, request)

    @staticmethod
    def _check_cluster_ip(name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The API server's Service validation: spec.clusterIP may not change once set."""
        had, now = (old.get("spec") or {}).get("clusterIP"), (new.get("spec") or {}).get("clusterIP")
        if had and now != had:
            message = f'Invalid value: []string{{"{now}"}}: may not change once set'
            raise kmock.KubernetesError(status=422, reason="Invalid", message=(
                f'Service "{name}" is invalid: spec.clusterIPs[0]: {message}'), details={
                "name": name, "kind": "Service",
                "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "spec.clusterIPs[0]"}]})

    async def _create(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """POST: a new object with its server fields; 409 AlreadyExists when one lives under that name."""
        created = copy.deepcopy(request.data)
        meta = created.setdefault("metadata", {})
        meta.setdefault("namespace", request.namespace)
        key = (request.resource, meta["namespace"], meta.get("name"))
        async with self._lock:
            if self._live(key) is not None:
                raise kmock.KubernetesError(status=409, reason="AlreadyExists",
                                            message=f'{request.resource.plural} "{meta.get("name")}" already exists')
            self.owners[key] = {(request.params.get("fieldManager") or "unknown", "Update"): set(leaves(created))}
            return await self._commit(key, None, created, request)

    async def _replace(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """PUT: the whole object, refused with 409 Conflict when its resourceVersion is not the stored one
        (optimistic concurrency); server fields are kept."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            current = self._live(key)
            if current is None:
                raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
            old = json.loads(json.dumps(current.raw))
            new = copy.deepcopy(request.data)
            sent = (new.get("metadata") or {}).get("resourceVersion")
            if sent is not None and sent != old["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(status=409, reason="Conflict", message=(
                    f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": the object has '
                    "been modified; please apply your changes to the latest version and try again"))
            meta = new.setdefault("metadata", {})
            for field in SERVER_FIELDS:
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
            self.owners.setdefault(key, {}).setdefault(
                (request.params.get("fieldManager") or "unknown", "Update"), set()).update(leaves(new))
            return await self._commit(key, old, new, request)

    async def _update(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        manager = request.params.get("fieldManager") or "unknown"
        async with self._lock:
            current = self._live(key)
            if current is None:
                raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
            old = json.loads(json.dumps(current.raw))
            new = merge_patch(copy.deepcopy(old), request.data)
            before, after = leaves(old), leaves(new)
            changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
            owners = self.owners.setdefault(key, {})
            for paths in owners.values():
                paths -= changed
            owners.setdefault((manager, "Update"), set()).update(changed & after.keys())
            return await self._commit(key, old, new, request)

    async def _commit(self, key: tuple[Any, str, str], old: dict[str, Any] | None, new: dict[str, Any],
                      request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Store the new version with its server fields, tell the watchers, answer as the API server."""
        meta = new.setdefault("metadata", {})
        owners = {owner: paths for owner, paths in self.owners[key].items() if paths}
        self.owners[key] = owners
        meta["managedFields"] = [
            {"manager": manager, "operation": operation, "apiVersion": new.get("apiVersion", ""),
             "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}
            for (manager, operation), paths in owners.items()]
        if old is None:
            meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion=str(next(self._versions)),
                        creationTimestamp=datetime.datetime.now(datetime.UTC).isoformat())
            if key in self.objects:
                self.objects[key].create(new)
            else:
                self.objects[key] = new
        else:
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(meta.get("generation") or 0) + 1
            if new != old:
                meta["resourceVersion"] = str(next(self._versions))
            self.objects[key].history.append(new)
        await self._buses[request.resource].put({"type": "ADDED" if old is None else "MODIFIED", "object": new})
        if request.subresource == "scale":
            new = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": meta,
                   "spec": {"replicas": new["spec"].get("replicas")}, "status": new.get("status") or {}}
        return aiohttp.web.json_response(new, status=201 if old is None else 200)


class Cluster:
    """The mock API server, the real client pointed at it, and readers for assertions."""

    def __init__(self, emulator: ApplyingEmulator, url: str) -> None:
        self.emulator = emulator
        configuration = k8s.Configuration()
        configuration.host = url
        self.api_client = k8s.ApiClient(configuration)
        self.apps = k8s.AppsV1Api(self.api_client)
        self.discovery = k8s.DiscoveryV1Api(self.api_client)

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (RESOURCES[kind], namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return json.loads(json.dumps(self.emulator.objects[key].raw))

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """What `kubectl get deployment <name> -n <namespace> -o json` shows."""
        return json.loads(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False).data)

    def set_deployment_status(self, namespace: str, name: str, *, replicas: int, ready: int,
                              updated: int | None = None, available: int | None = None,
                              conditions: list[dict[str, str]] = (), observed: int | None = None) -> None:
        """Play the Deployment controller: write the status subresource through the API."""
        generation = self.read_deployment(namespace, name)["metadata"].get("generation", 0)
        status = {"observedGeneration": generation if observed is None else observed, "replicas": replicas,
                  "readyReplicas": ready, "updatedReplicas": replicas if updated is None else updated,
                  "availableReplicas": ready if available is None else available,
                  "conditions": list(conditions)}
        self.apps.patch_namespaced_deployment_status(name, namespace, {"status": status}, _preload_content=False)

    def scale_as_the_hpa(self, namespace: str, name: str, replicas: int) -> None:
        """Play the HorizontalPodAutoscaler controller: update the scale subresource under its field manager."""
        self.apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, field_manager=HPA_FIELD_MANAGER,
            _content_type="application/merge-patch+json", _preload_content=False)

    def replicas_owners(self, namespace: str, name: str) -> set[tuple[str, str]]:
        """(manager, operation) of the managedFields entries that own the Deployment's spec.replicas."""
        return {(entry["manager"], entry["operation"])
                for entry in self.read_deployment(namespace, name)["metadata"]["managedFields"]
                if "f:replicas" in entry["fieldsV1"].get("f:spec", {})}

    def set_endpoint_slice(self, namespace: str, service: str, pods: dict[str, bool], *, suffix: str = "abcde",
                           address_type: str = "IPv4") -> None:
        """Play the EndpointSlice controller: slice <service>-<suffix> lists pods (ip -> ready) on the grpc port."""
        name = f"{service}-{suffix}"
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": service,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "ports": [{"name": "grpc", "port": 8001, "protocol": "TCP"},
                          {"name": "http", "port": 8000, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready,
                                                                 "terminating": False},
                               "targetRef": {"kind": "Pod", "namespace": namespace,
                                             "name": f"{service}-pod-{ip.replace('.', '-').replace(':', '-')}"}}
                              for ip, ready in pods.items()]}
        if self.stored("EndpointSlice", namespace, name) is None:
            self.discovery.create_namespaced_endpoint_slice(namespace, body, _preload_content=False)
        else:
            self.discovery.replace_namespaced_endpoint_slice(name, namespace, body, _preload_content=False)

    def close(self) -> None:
        self.api_client.close()
