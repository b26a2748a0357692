"""What the Kubernetes runtime calls things: object names, namespaces, labels, annotations.

Objects of one endpoint (names fixed by the seed document, section 7)::

    Deployment               serving-<endpoint-id>          pods labelled app=serving-<endpoint-id>
    Service (headless)       serving-<endpoint-id>          ports grpc 8001, http 8000, metrics 8002;
                                                            its EndpointSlices list the pods the router calls
    HorizontalPodAutoscaler  serving-<endpoint-id>-hpa
    Service (ExternalName)   serving-<endpoint-id>-gateway  the platform's Envoy gateway Service
    Ingress                  serving-<endpoint-id>-ingress  the route -> serving-<endpoint-id>-gateway
    NetworkPolicy            serving-<endpoint-id>          its pods answer the router (gRPC) and Prometheus
    Secret                   serving-<endpoint-id>-replica-key  the key Triton demands (Settings.replica_key)

in ``settings.kubernetes_namespaces.get(environment, settings.kubernetes_namespace)``.
Shared by the manifest builders (which write them) and the status reader (which reads them back).
"""

from __future__ import annotations

import re

from shared.settings import Settings

FIELD_MANAGER = "llmops-deployment"
# Co-owns spec.replicas while the HPA takes it over (see k8s_manifests.build_replicas_handover).
HANDOVER_FIELD_MANAGER = "llmops-handover-to-hpa"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

LABEL_APP = "app"
LABEL_ENDPOINT = "llmops.dev/endpoint-id"
LABEL_REVISION = "llmops.dev/revision"
LABEL_ENVIRONMENT = "llmops.dev/environment"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_REVISION = "llmops.dev/revision"
ANNOTATION_MODEL_ID = "llmops.dev/model-id"
ANNOTATION_MODEL = "llmops.dev/model"
ANNOTATION_TRITON_MODEL = "llmops.dev/triton-model"
ANNOTATION_ROUTE = "llmops.dev/route"
ANNOTATION_REPLICA_KEY_DIGEST = "llmops.dev/replica-key-sha256"

# The pods allowed to call a serving pod's gRPC port, in the platform's namespace (deploy/kubernetes/base),
# and the namespace whose Prometheus scrapes its metrics port, as base/network-policies.yaml has it.
ROUTER_POD_LABELS = {"app.kubernetes.io/name": "router", "app.kubernetes.io/part-of": "llmops"}
MONITORING_NAMESPACE = "monitoring"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
REPLICA_KEY_ENV = "REPLICA_KEY"
REPLICA_KEY_SECRET_KEY = "replica-key"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def deployment_name(endpoint_id: str) -> str:
    """Also the Service's name and the pods' ``app`` label."""
    name = f"serving-{endpoint_id}"
    if not _DNS_LABEL.fullmatch(name) or len(name) > 63:
        raise ValueError(f"endpoint id {endpoint_id!r} does not make a Kubernetes name: serving-<id> must be a "
                         "DNS label (lowercase letters, digits, '-'; at most 63 characters)")
    return name


def service_name(endpoint_id: str) -> str:
    return deployment_name(endpoint_id)


def gateway_service_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-gateway"


def hpa_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-hpa"


def ingress_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-ingress"


def network_policy_name(endpoint_id: str) -> str:
    return deployment_name(endpoint_id)


def replica_key_secret_name(endpoint_id: str) -> str:
    return f"{deployment_name(endpoint_id)}-replica-key"


def namespace_for(settings: Settings, environment: str) -> str:
    return settings.kubernetes_namespaces.get(environment, settings.kubernetes_namespace)


def candidate_namespaces(settings: Settings) -> list[str]:
    """Every namespace an endpoint may live in (status/remove get only the endpoint id)."""
    return list(dict.fromkeys([settings.kubernetes_namespace, *settings.kubernetes_namespaces.values()]))


def platform_namespace(settings: Settings) -> str:
    """The deployment service's own namespace (downward API), where its Lease and the gateway live."""
    return settings.pod_namespace or settings.kubernetes_namespace


def gateway_host(settings: Settings) -> str:
    """The gateway Service's cluster DNS name, fully qualified: an ingress controller resolves it
    from its own namespace, with its own search path."""
    namespace = settings.kubernetes_gateway_namespace or platform_namespace(settings)
    return f"{settings.kubernetes_gateway_service}.{namespace}.svc.{settings.kubernetes_cluster_domain}"
