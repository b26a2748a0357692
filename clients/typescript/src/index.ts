/**
 * @llmops/client: the platform's gRPC API for Node, generated from protos/ into src/gen by
 * `make stubs` (never edited by hand), plus what the stubs cannot know: how a caller says who it is.
 * The gateway (Envoy, default port 8080) routes native gRPC by path to the services, so one
 * address serves every client.
 */
import {
  type CallOptions,
  Channel,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  InterceptingCall,
  type Interceptor,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { DeploymentServiceClient } from "./gen/llmops/v1/deployment.js";
import { ExperimentServiceClient } from "./gen/llmops/v1/experiment.js";
import { InferenceServiceClient, OpenAIServiceClient } from "./gen/llmops/v1/inference.js";
import { RegistryServiceClient } from "./gen/llmops/v1/registry.js";

export * from "./gen/llmops/v1/audit.js";
export * from "./gen/llmops/v1/deployment.js";
export * from "./gen/llmops/v1/experiment.js";
export * from "./gen/llmops/v1/inference.js";
export * from "./gen/llmops/v1/registry.js";
export { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";

/**
 * Who the caller is. The gateway's trusted-headers mode (the local default) reads x-user-id and
 * x-user-roles; its jwt mode (production) ignores those and reads the bearer token's claims.
 */
export type Identity = { userId: string; roles?: readonly string[] } | { token: string };

export interface ClientsOptions {
  identity?: Identity;
  /** Defaults from the address: TLS for https://, plaintext for http:// or a bare host:port. */
  credentials?: ChannelCredentials;
  channelOptions?: ChannelOptions;
}

/** One client per service, sharing one HTTP/2 connection to the gateway. */
export interface Clients {
  registry: RegistryServiceClient;
  deployment: DeploymentServiceClient;
  experiment: ExperimentServiceClient;
  inference: InferenceServiceClient;
  openai: OpenAIServiceClient;
  /** Closes the shared channel, so the process can exit. */
  close(): void;
}

/** The metadata that carries `identity`; refuses what the gateway would misread. */
export function identityMetadata(identity: Identity): Metadata {
  const metadata = new Metadata();
  if ("token" in identity) {
    if (!identity.token) throw new Error("identity: the token is empty");
    metadata.set("authorization", `Bearer ${identity.token}`);
    return metadata;
  }
  if (!identity.userId) throw new Error("identity: the userId is empty");
  metadata.set("x-user-id", identity.userId);
  const roles = identity.roles ?? [];
  const bad = roles.find((role) => !role || role.includes(","));
  if (bad !== undefined) throw new Error(`identity: role ${JSON.stringify(bad)} is empty or has a comma`);
  if (roles.length > 0) metadata.set("x-user-roles", roles.join(","));
  return metadata;
}

const IDENTITY_KEYS = ["authorization", "x-user-id", "x-user-roles"];

/** Adds the identity to every call of a client, unary and streaming alike (grpc-js refuses
 * call credentials on a plaintext channel, which is what the local gateway speaks). A call
 * that brings identity metadata of its own keeps it whole: two identities never mix. */
export function identityInterceptor(identity: Identity): Interceptor {
  const identityMd = identityMetadata(identity);
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        if (!IDENTITY_KEYS.some((key) => metadata.get(key).length > 0)) metadata.merge(identityMd);
        next(metadata, listener);
      },
    });
}

/** The grpc-js target and default credentials for a gateway address such as
 * `127.0.0.1:8080`, `http://127.0.0.1:8080` (the BASE_URL of the REST examples) or `https://host`. */
export function gatewayTarget(address: string): { target: string; credentials: ChannelCredentials } {
  const scheme = /^(https?):\/\//i.exec(address)?.[1]?.toLowerCase();
  if (!scheme) return { target: address, credentials: grpcCredentials.createInsecure() };
  const url = new URL(address);
  if (url.pathname !== "/" || url.search) {
    throw new Error(`gateway address ${address}: gRPC needs only scheme, host and port (no path)`);
  }
  const tls = scheme === "https";
  return {
    target: `${url.hostname}:${url.port || (tls ? "443" : "80")}`,
    credentials: tls ? grpcCredentials.createSsl() : grpcCredentials.createInsecure(),
  };
}

/** Every service's client on one channel to the gateway, each call carrying `options.identity`. */
export function createClients(address: string, options: ClientsOptions = {}): Clients {
  const { target, credentials } = gatewayTarget(address);
  const channelCredentials = options.credentials ?? credentials;
  const channel = new Channel(target, channelCredentials, options.channelOptions ?? {});
  const clientOptions = {
    channelOverride: channel,
    interceptors: options.identity ? [identityInterceptor(options.identity)] : [],
  };
  return {
    registry: new RegistryServiceClient(target, channelCredentials, clientOptions),
    deployment: new DeploymentServiceClient(target, channelCredentials, clientOptions),
    experiment: new ExperimentServiceClient(target, channelCredentials, clientOptions),
    inference: new InferenceServiceClient(target, channelCredentials, clientOptions),
    openai: new OpenAIServiceClient(target, channelCredentials, clientOptions),
    close: () => channel.close(),
  };
}

/** The stubs' fullest unary overload; conditional types match an overloaded method by its last one. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;
type UnaryName<C> = {
  [K in keyof C]: C[K] extends UnaryMethod<any, any> ? (C[K] extends StreamMethod ? never : K) : never;
}[keyof C];
// A stream method would pass as unary (a stream is a call with more members), so UnaryName drops it.
type StreamMethod = (...args: any[]) => ClientReadableStream<any>;
type RequestOf<M> = M extends UnaryMethod<infer Req, any> ? Req : never;
type ResponseOf<M> = M extends UnaryMethod<any, infer Res> ? Res : never;

/**
 * A unary call as a promise, typed from the stub: `await unary(clients.registry, "listModels",
 * ListModelsRequest.fromPartial({}))`. The grpc-js stubs are callback-style; server streams
 * (`clients.inference.chatStream(...)`) are async iterables already.
 */
export function unary<C, K extends UnaryName<C>>(
  client: C,
  method: K,
  request: RequestOf<C[K]>,
  options: Partial<CallOptions> = {},
): Promise<ResponseOf<C[K]>> {
  const call = client[method] as UnaryMethod<RequestOf<C[K]>, ResponseOf<C[K]>>;
  return new Promise((resolve, reject) => {
    call.call(client, request, new Metadata(), options, (error, response) => (error ? reject(error) : resolve(response)));
  });
}
