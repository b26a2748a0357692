"""Configuration of every service, read once from LLMOPS_* environment variables."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]

EnvironmentName = Literal["dev", "stg", "prod"]
ENVIRONMENT_NAMES: tuple[str, ...] = get_args(EnvironmentName)
# The HTTP header a Triton replica demands on every API but health, Settings.replica_key(); over gRPC
# Triton looks for it under its own prefix.
REPLICA_KEY_HEADER = "llmops-replica-key"
REPLICA_KEY_METADATA = f"triton-grpc-protocol-{REPLICA_KEY_HEADER}"


class Settings(BaseSettings):
    """All knobs of the platform. Each field maps to LLMOPS_<FIELD_NAME>."""

    model_config = SettingsConfigDict(env_prefix="LLMOPS_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{REPO_ROOT / 'var' / 'llmops.db'}",
        description="SQLAlchemy URL. SQLite file by default; postgresql://... selects psycopg 3.",
    )
    redis_url: str | None = Field(default=None, description="Redis for rate limits, caches and streams.")

    host: str = Field(default="127.0.0.1", description="Interface the gRPC services bind.")
    # One per component of the protos (option llmops.v1.component) and reflection: LLMOPS_<NAME>_PORT.
    registry_port: int = 50051
    deployment_port: int = 50052
    experiment_port: int = 50053
    router_port: int = 50054
    reflection_port: int = 50055
    service_token: SecretStr | None = Field(
        default=None, description="The credential the platform's own processes present on internal methods (the "
                                  "route and experiment watches, outcome ingestion). `make up` makes a random one "
                                  "when unset; a service without one refuses every internal call.")
    service_credential_required: bool = Field(
        default=False, description="Every call but health and reflection must carry the service credential, "
                                   "which the gateway adds to what it forwards: set it where something other "
                                   "than the gateway can reach a service port (compose, Kubernetes), so that a "
                                   "direct call cannot claim any X-User-Id it likes.")
    # Where the services are, for the others and the gateway image, when not on this machine: host:port,
    # e.g. LLMOPS_REGISTRY_ADDRESS=registry:50051; empty: 127.0.0.1:<its port>.
    registry_address: str = ""
    deployment_address: str = ""
    experiment_address: str = ""
    router_address: str = ""
    reflection_address: str = ""
    metrics_port: int = Field(default=0, description="Prometheus /metrics port of this process; 0 disables.")
    metrics_address: str = Field(
        default="127.0.0.1", description="Where /metrics listens: this machine only, unless a scraper elsewhere "
                                         "needs it (0.0.0.0 in Kubernetes, where NetworkPolicies admit Prometheus "
                                         "alone). Also the local runtime's Triton replicas' metrics address and "
                                         "`make up`'s supervisor's.")

    gateway_port: int = Field(default=8080, description="Envoy: REST and gRPC on one port.")
    gateway_admin_port: int = Field(default=9901, description="Envoy's admin interface, on 127.0.0.1 only.")
    gateway_stats_port: int = Field(
        default=0, description="A port on the gateway's listening address that answers only GET /ready and "
                               "/stats/prometheus from the admin interface, for probes and Prometheus in "
                               "compose and Kubernetes; 0: none.")
    gateway_listen_address: str = Field(
        default="", description="Envoy's listening address. Empty: 127.0.0.1 in trusted-headers mode (a client "
                                "header is an identity, so only this machine may send one), 0.0.0.0 in jwt mode.")
    gateway_identity_mode: Literal["trusted-headers", "jwt"] = "trusted-headers"
    gateway_trusted_proxies: list[str] = Field(
        default_factory=list, description='CIDRs of proxies in front of Envoy whose X-Request-Id is kept, e.g. '
                                          '["10.0.0.0/8"]; anyone else\'s is replaced by one Envoy generates.')
    gateway_max_body_bytes: int = Field(default=1_048_576, description="Request body limit (413 above).")
    gateway_upstream_timeout_s: float = 120.0
    jwt_issuer: str = ""
    jwt_audiences: list[str] = Field(default_factory=list)
    jwt_jwks_path: str = Field(default="", description="jwt mode: the identity provider's keys, a JWKS file.")
    jwt_jwks_uri: str = Field(default="", description="jwt mode: or their URL (http or https), which Envoy fetches "
                                                      "and caches; the path wins when both are set.")
    jwt_user_claim: str = Field(default="sub", description="jwt mode: the claim that becomes X-User-Id.")
    jwt_roles_claim: str = Field(default="roles", description="jwt mode: the claim that becomes X-User-Roles, a "
                                                              "list of role names or one comma-separated string.")

    # Serving (deployment service)
    serving_runtime: Literal["local", "kubernetes"] = Field(
        default="local", description="local: Triton processes on this machine; kubernetes: Deployments + HPA.")
    serving_dir: Path = Field(default=REPO_ROOT / "var" / "serving",
                              description="Local runtime: model repositories, replica logs and state.")
    triton_home: Path = Field(default=REPO_ROOT / "build" / "triton",
                              description="Local runtime: where the tritonserver from nvidia-pytriton is laid out.")
    serving_advertise_host: str = Field(
        default="127.0.0.1", description="Local runtime: the host of the replica addresses the router is given "
                                         "(e.g. `deployment` in compose, where the router runs in another "
                                         "container); Triton binds 0.0.0.0 when it is not a loopback address.")
    local_artifact_roots: list[Path] = Field(
        default_factory=list, description='Local runtime: directories file:// artifacts may come from, e.g. '
                                          '["/srv/models"]; none by default (pkg:// artifacts only).')
    triton_ready_timeout_s: float = Field(default=300.0, description="How long a new replica may take to be ready.")
    reconcile_interval_s: float = Field(default=2.0, description="Local runtime: health check and autoscale period.")
    drain_s: float = Field(default=2.0, description="Blue/green: how long old replicas keep serving after the switch.")
    replica_stop_timeout_s: float = Field(
        default=30.0, gt=0, description="Local runtime: how long a stopped replica may take to finish what it is "
                                        "doing (SIGTERM) before what is left of it is killed (SIGKILL).")
    scale_down_window_s: float = Field(default=60.0,
                                       description="Local autoscaler: a lower replica count must hold this long.")
    kubernetes_namespace: str = Field(default="default", description="Namespace of endpoints without an override.")
    kubernetes_namespaces: dict[str, str] = Field(
        default_factory=dict, description='Per-environment namespaces, e.g. {"prod": "serving-prod"}.')
    kubernetes_kubeconfig: str | None = Field(default=None, description="Kubeconfig path; in-cluster config when empty.")
    triton_image: str = Field(default="nvcr.io/nvidia/tritonserver:24.08-py3", description="CPU replicas' image.")
    triton_gpu_image: str = Field(default="nvcr.io/nvidia/tritonserver:24.08-trtllm-python-py3",
                                  description="Image for tensorrt_llm models (GPU nodes).")
    gpus_per_replica: int = Field(default=1, description="nvidia.com/gpu per replica of a tensorrt_llm model.")
    ingress_class: str = "nginx"
    ingress_host: str = Field(default="", description="Host of the endpoints' Ingress rules; empty: any host.")
    services_image: str = Field(default="ghcr.io/llmops-platform/llmops:0.1.0",
                                description="Kubernetes: the platform's image; serving pods of pkg:// models run "
                                            "it (it holds the bundled models, llama.cpp and tritonserver).")
    kubernetes_gateway_service: str = Field(default="llmops-gateway", description="Kubernetes: the Envoy gateway's "
                                            "Service (port kubernetes_gateway_port), where endpoint Ingresses go.")
    kubernetes_gateway_namespace: str = Field(default="", description="Its namespace; empty: pod_namespace.")
    kubernetes_gateway_port: int = 8080
    kubernetes_cluster_domain: str = "cluster.local"
    pod_name: str = Field(default="", description="Kubernetes (downward API): this pod, the leader lease identity.")
    pod_namespace: str = Field(default="", description="Kubernetes (downward API): this pod's namespace, where "
                                                       "the leader lease lives; empty: kubernetes_namespace.")
    leader_lease_name: str = Field(default="llmops-deployment-leader",
                                   description="Kubernetes: the coordination.k8s.io Lease the deployment service "
                                               "replicas elect their one acting leader with.")
    leader_lease_duration_s: float = Field(default=15.0, gt=0, description="How long a lease holds unrenewed.")
    leader_renew_deadline_s: float = Field(default=10.0, gt=0, description="A leader that could not renew for "
                                                                           "this long stops acting.")
    leader_retry_period_s: float = Field(default=2.0, gt=0, description="Between two acquire or renew tries.")

    # Inference router
    router_request_timeout_s: float = Field(default=120.0, description="Per-request limit (504 beyond it).")
    rate_limit_per_minute: int = Field(default=600, description="Inference requests per user per minute; 0: off.")
    max_output_tokens: int = Field(default=2048, description="Upper bound of max_tokens (400 above).")
    router_queue_per_replica: int = Field(
        default=8, ge=1, description="Requests that may wait on a replica beyond its slots (the requests it runs "
                                     "at once: model metadata `slots`, else its runtime's default); beyond slots + "
                                     "this a request is answered 503 with Retry-After at once.")
    router_queue_budget: float = Field(
        default=1.0, ge=0, description="The standing queue a replica may keep, in its service times S (from a "
                                       "request's start of running to its end): a request that would wait is "
                                       "answered 503 with Retry-After at once when the waits stayed above budget x "
                                       "S for a whole S and the oldest waiting request has waited longer (CoDel's "
                                       "rule, services/router/admission.py); below its slots a replica takes every "
                                       "request. 0: off (slots + router_queue_per_replica alone bound the queue).")

    # Experiments (experiment service and router)
    experiment_alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the A/B tests.")
    experiment_min_samples: int = Field(default=30, ge=2, description="Observations per variant before any "
                                                                     "recommendation.")
    experiment_sequential_tuning: float = Field(
        default=5000.0, gt=0, description="Sample size the anytime-valid confidence sequence is tightest at "
                                          "(GrowthBook's default); any size stays valid.")
    outcome_journal_dir: Path = Field(
        default=REPO_ROOT / "var" / "router", description="Router: where experiment outcomes wait until the "
                                                          "experiment service (or Redis) has them; survives restarts.")

    environments: list[EnvironmentName] = Field(
        default_factory=lambda: list(ENVIRONMENT_NAMES), min_length=1,
        description='The environments this platform serves (JSON, e.g. ["prod"]): the router holds the endpoints '
                    'of each and the gateway picks one per request by its Host (prod.llm-ops.local is prod); a '
                    'deploy to any other is refused (400).')
    environment: EnvironmentName = Field(
        default="dev", description="The default environment, one of environments: that of a request whose Host "
                                   "names none (localhost, an IP address), and the one prompt experiments run "
                                   "in. Unset: dev, or the first of environments when dev is not served.")
    log_level: str = "INFO"
    log_json: bool = Field(default=True, description="JSON log lines (false: console format).")
    log_dir: Path | None = Field(
        default=None, description="`make up`: one log file per process, every line as written (the services' "
                                  "JSON, Envoy's access log in envoy-access.log); unset: `log` beside serving_dir "
                                  "(var/log).")
    log_file_max_bytes: int = Field(
        default=10_485_760, ge=0, description="`make up`: a log file that reaches this size becomes <name>.log.1 "
                                              "(the one there is dropped), as the last run's does at start; "
                                              "0: unbounded.")
    log_verbose: bool = Field(
        default=False, description="`make up`: every line of every process in the terminal too (each call, "
                                   "Envoy's access log), not only starts, exits, warnings, errors and rollouts.")
    shutdown_grace_s: float = 5.0
    supervisor_metrics_port: int = Field(
        default=9190, description="`make up`: the supervisor's /metrics (restarts by process); 0 disables.")

    def replica_key(self) -> str:
        """What the Triton replicas demand in REPLICA_KEY_HEADER on every API but health, so that only the
        router infers and nobody changes their logging (docs/architecture.md section 4): an HMAC of
        service_token, which the deployment service and the router both hold, so nothing carries it
        between them, and a replica's command line, where it is visible, never shows the token itself.
        Empty without a token (then no router can be sent a route either)."""
        token = self.service_token.get_secret_value() if self.service_token else ""
        if not token:
            return ""
        return hmac.new(token.encode(), b"llmops triton replica key", hashlib.sha256).hexdigest()

    def port_of(self, component: str) -> int:
        """The port of a component of the protos (llmops.v1.component) or of reflection."""
        return getattr(self, f"{component}_port")

    def address_of(self, component: str) -> str:
        """Where this process calls another service: its *_address, else its port on this machine."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return getattr(self, f"{component}_address", "") or f"{host}:{self.port_of(component)}"

    @model_validator(mode="after")
    def _leader_timings(self) -> Settings:
        # client-go's rule: a leader must stop acting before its lease can expire for the others.
        if not self.leader_retry_period_s < self.leader_renew_deadline_s < self.leader_lease_duration_s:
            raise ValueError("leader election needs leader_retry_period_s < leader_renew_deadline_s < "
                             "leader_lease_duration_s")
        return self

    @model_validator(mode="after")
    def _default_environment(self) -> Settings:
        self.environments = list(dict.fromkeys(self.environments))  # each once, in the order given
        if self.environment not in self.environments:
            if "environment" in self.model_fields_set:
                raise ValueError(f"environment {self.environment} is not one of environments "
                                 f"({', '.join(self.environments)}): the default must be served")
            self.environment = self.environments[0]
        return self

    @model_validator(mode="after")
    def _credential_to_require(self) -> Settings:
        if self.service_credential_required and not self.service_token:
            raise ValueError("service_credential_required needs a service_token (LLMOPS_SERVICE_TOKEN) to require")
        return self

    @model_validator(mode="after")
    def _jwt_keys(self) -> Settings:
        if self.gateway_identity_mode == "jwt" and not (self.jwt_jwks_path or self.jwt_jwks_uri):
            raise ValueError("jwt identity mode needs the identity provider's keys: jwt_jwks_path or jwt_jwks_uri")
        return self

    @model_validator(mode="after")
    def _gateway_listen_address(self) -> Settings:
        if not self.gateway_listen_address:
            self.gateway_listen_address = "127.0.0.1" if self.gateway_identity_mode == "trusted-headers" else "0.0.0.0"
        return self

    @model_validator(mode="after")
    def _log_dir(self) -> Settings:
        if self.log_dir is None:  # beside this install's state, so a run with its own serving_dir has its own logs
            self.log_dir = Path(self.serving_dir).parent / "log"
        return self

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, url: str) -> str:
        # SQLAlchemy's bare postgresql:// means psycopg2; this platform ships psycopg 3.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
