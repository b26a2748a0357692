"""The API as the protos declare it: the services and the process serving each
(`llmops.v1.component`), who may call each method (`llmops.v1.access`), the
internal and the streaming methods, the HTTP bindings and the messages their
bodies are read as. The gateway config, reflection, the access table and
`make up`'s process list are derived from here, so a new service or method is
a change in the protos (and, for a new process, its package under services/)."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

import llmops.v1
from llmops.v1 import access_pb2

SERVICES_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Method:
    path: str               # /llmops.v1.Service/Method, as gRPC and Envoy's routes name it
    service: str            # llmops.v1.Service
    component: str          # the process that serves it
    access: access_pb2.Access
    server_streaming: bool
    http: tuple[tuple[str, str, str], ...]  # (verb, path, body) of each HTTP binding, additional ones included


@dataclass(frozen=True)
class Component:
    name: str                # process, gateway cluster, services/<name>/ package, LLMOPS_<NAME>_PORT
    services: tuple[str, ...]  # full names of the services it serves

    @property
    def implemented(self) -> bool:
        """Whether its process exists: services/<name>/__main__.py (`python -m <name>`)."""
        return (SERVICES_DIR / self.name / "__main__.py").is_file()


@functools.cache
def services() -> tuple[ServiceDescriptor, ...]:
    """Every service of the llmops.v1 protos that names its component, in a stable order."""
    found = []
    for module in pkgutil.iter_modules(llmops.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"llmops.v1.{module.name}").DESCRIPTOR
            found += [s for s in descriptor.services_by_name.values()
                      if s.GetOptions().HasExtension(access_pb2.component)]
    return tuple(sorted(found, key=lambda s: s.full_name))


def component_of(service: ServiceDescriptor) -> str:
    return service.GetOptions().Extensions[access_pb2.component].name


def components(*, implemented_only: bool = True) -> list[Component]:
    by_name: dict[str, list[str]] = {}
    for service in services():
        by_name.setdefault(component_of(service), []).append(service.full_name)
    every = [Component(name, tuple(names)) for name, names in sorted(by_name.items())]
    return [c for c in every if c.implemented] if implemented_only else every


def _http(method) -> tuple[tuple[str, str, str], ...]:  # noqa: ANN001
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ()
    rule = options.Extensions[annotations_pb2.http]
    bindings = []
    for binding in (rule, *rule.additional_bindings):
        verb = binding.WhichOneof("pattern")
        bindings.append((verb.upper(), getattr(binding, verb), binding.body))
    return tuple(bindings)


@functools.cache
def methods() -> tuple[Method, ...]:
    return tuple(
        Method(path=f"/{service.full_name}/{m.name}", service=service.full_name, component=component_of(service),
               access=m.GetOptions().Extensions[access_pb2.access], server_streaming=m.server_streaming,
               http=_http(m))
        for service in services() for m in service.methods)


def internal_methods() -> list[Method]:
    """Only for the platform's own processes: never routed through the gateway."""
    return [m for m in methods() if m.access.internal]


def streaming_methods() -> list[Method]:
    """Server-streaming methods the gateway routes (no overall timeout, only an idle one)."""
    return [m for m in methods() if m.server_streaming and not m.access.internal]


# ------------------------------------------------------------------ REST bodies (the gateway's request_fields.lua)


@dataclass(frozen=True)
class RequestBody:
    verb: str
    path: str                  # the binding's path template, as in Method.http
    message: Descriptor        # what the JSON body is read as: the request, or its `body` field's message
    bound: frozenset[str]      # fields of that message the path binds (they need not be in the body)


def request_bodies() -> list[RequestBody]:
    """Every routed HTTP binding whose body the transcoder parses as a message; not those whose
    body is a google.api.HttpBody (/v1: the router reads OpenAI's JSON itself)."""
    found = []
    for service in services():
        for m in service.methods:
            if m.GetOptions().Extensions[access_pb2.access].internal:
                continue
            for verb, path, body in _http(m):
                if not body:
                    continue
                message = m.input_type if body == "*" else m.input_type.fields_by_name[body].message_type
                if message is None or message.full_name == "google.api.HttpBody":
                    continue
                prefix = "" if body == "*" else body + "."
                variables = [v.split("=")[0] for v in re.findall(r"\{([^}]+)\}", path)]
                bound = frozenset(v.removeprefix(prefix).split(".")[0] for v in variables if v.startswith(prefix))
                found.append(RequestBody(verb, path, message, bound))
    return found


def is_well_known(message: Descriptor) -> bool:
    """google.protobuf's types (Struct, Value, Timestamp, wrappers, ...) have JSON forms of their own."""
    return message.full_name.startswith("google.protobuf.")


def unseen_when_missing(field: FieldDescriptor) -> bool:
    """A REQUIRED field whose absence the service cannot see: the transcoder fills a missing field
    with its zero value, and for a number or a bool without presence that zero is a value (an
    experiment's allocation of 0 %). A missing string, list or message reaches the service empty,
    and the service refuses it itself."""
    required = field_behavior_pb2.REQUIRED in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    scalar = field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES,
                                FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)
    return required and scalar and not field.has_presence and not field.is_repeated
