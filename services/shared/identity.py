"""Who is calling, and the access table declared on each RPC in the protos."""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf import descriptor_pool
from pydantic import SecretStr

from llmops.v1 import access_pb2

from . import api

from .errors import InvalidArgument, PermissionDenied, Unauthenticated

ROLES = frozenset({"admin", "operator", "reviewer", "researcher", "viewer"})
USER_ID_KEY = "x-user-id"
ROLES_KEY = "x-user-roles"
REQUEST_ID_KEY = "x-request-id"
SERVICE_TOKEN_KEY = "x-llmops-service-token"


@dataclass(frozen=True)
class Identity:
    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_anonymous(self) -> bool:
        return not self.user_id

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata that carries this identity to another service."""
        return ((USER_ID_KEY, self.user_id), (ROLES_KEY, ",".join(sorted(self.roles))))


ANONYMOUS = Identity(user_id="")
_current: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity", default=ANONYMOUS)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_identity() -> Identity:
    return _current.get()


def current_request_id() -> str:
    return _request_id.get()


MAX_USER_ID_LENGTH = 256  # what the tables' created_by/actor columns hold
# Only ASCII blanks are trimmed: "admin" followed by a no-break space is not "admin".
_ASCII_BLANKS = " \t"


def call_metadata(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The call's metadata as one value per key. X-User-Id must come once: two lines (a second
    one smuggled in by a bare LF, say) would leave the caller to whichever a component reads.
    X-User-Roles is a list: its lines join with commas, as HTTP combines list fields."""
    metadata: dict[str, str] = {}
    for key, value in pairs:
        if key == USER_ID_KEY and key in metadata:
            raise InvalidArgument("X-User-Id appears more than once", reason="AMBIGUOUS_IDENTITY")
        if key == ROLES_KEY and key in metadata:
            value = f"{metadata[key]},{value}"
        metadata[key] = value
    return metadata


def identity_from_metadata(metadata: dict[str, str]) -> Identity:
    user_id = metadata.get(USER_ID_KEY, "").strip(_ASCII_BLANKS)
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidArgument(f"X-User-Id is longer than {MAX_USER_ID_LENGTH} characters", reason="USER_ID_TOO_LONG")
    if not (user_id.isascii() and user_id.isprintable()):
        # gRPC metadata carries printable ASCII only: the id travels on to the other services as such.
        raise InvalidArgument("X-User-Id must be printable ASCII", reason="INVALID_USER_ID")
    roles = {r.strip(_ASCII_BLANKS).lower() for r in metadata.get(ROLES_KEY, "").split(",")}
    return Identity(user_id=user_id, roles=frozenset(roles & ROLES))


def service_credential_ok(metadata: dict[str, str], expected: str | None) -> bool:
    """Whether the call carries the platform's service credential (never true when none is set)."""
    presented = metadata.get(SERVICE_TOKEN_KEY, "")
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def service_metadata(token: SecretStr | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that shows a call comes from one of the platform's processes (settings.service_token)."""
    return ((SERVICE_TOKEN_KEY, token.get_secret_value()),) if token and token.get_secret_value() else ()


def bind(identity: Identity, request_id: str) -> None:
    _current.set(identity)
    _request_id.set(request_id)


class AccessTable:
    """Method path (/pkg.Service/Method) -> the Access option of its proto."""

    # Standard services every server carries, open to probes and grpcurl.
    PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                       "grpc.reflection.v1.ServerReflection")

    _public_prefixes = tuple(f"/{s}/" for s in PUBLIC_SERVICES)

    def __init__(self, service_names: list[str]) -> None:
        api.services()  # every proto module imported: the descriptor pool knows each service
        pool = descriptor_pool.Default()
        self._rules: dict[str, access_pb2.Access] = {}
        for name in service_names:
            service = pool.FindServiceByName(name)
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(access_pb2.access):
                    self._rules[f"/{name}/{method.name}"] = options.Extensions[access_pb2.access]

    def rule(self, method: str) -> access_pb2.Access | None:
        return self._rules.get(method)

    def is_public_service(self, method: str) -> bool:
        return method.startswith(self._public_prefixes)

    def check(self, method: str, identity: Identity, *, platform_process: bool = False) -> access_pb2.Access | None:
        """Raise Unauthenticated/PermissionDenied unless identity may call method; an internal
        method also needs the caller to be one of the platform's processes (it presented the
        service credential: see service_credential_ok)."""
        if self.is_public_service(method):
            return None
        rule = self._rules.get(method)
        if rule is None:  # an RPC without a declared rule is closed, not open
            raise PermissionDenied(f"{method} declares no access rule", reason="NO_ACCESS_RULE")
        if rule.internal and not platform_process:
            raise Unauthenticated(f"{method.rsplit('/', 1)[-1]} is internal: only the platform's own processes, "
                                  "with the service credential, may call it", reason="SERVICE_CREDENTIAL_REQUIRED")
        if rule.public:
            return rule
        if identity.is_anonymous:
            raise Unauthenticated("missing identity: set the X-User-Id header", reason="MISSING_IDENTITY")
        if rule.roles and not identity.roles & set(rule.roles):
            allowed = ", ".join(rule.roles)
            raise PermissionDenied(
                f"role not allowed: {method.rsplit('/', 1)[-1]} needs one of [{allowed}]",
                reason="ROLE_NOT_ALLOWED",
            )
        return rule
