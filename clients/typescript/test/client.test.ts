// The package against the real gateway over native gRPC (node --import tsx --test). Run by
// tests/e2e/test_typescript_client.py, which starts the platform with a SmolLM2 endpoint and passes
// LLMOPS_URL (the gateway, as the CLI takes it), CHAT_ENDPOINT (its name) and CHAT_MODEL_ID (its model).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";

import {
  ChatRequest,
  ChatStreamRequest,
  type Clients,
  createClients,
  CreateModelRequest,
  DeleteEndpointRequest,
  DeployEndpointRequest,
  type Endpoint,
  gatewayTarget,
  GetEndpointRequest,
  identityMetadata,
  type Identity,
  ListEndpointsRequest,
  ListModelsRequest,
  type Model,
  Metadata,
  type ServiceError,
  status,
  unary,
  UpdateModelStatusRequest,
} from "../src/index.js";

const GATEWAY = process.env.LLMOPS_URL ?? "";
const CHAT_ENDPOINT = process.env.CHAT_ENDPOINT ?? "";
const CHAT_MODEL_ID = process.env.CHAT_MODEL_ID ?? "";
const LIVE = { timeout: 240_000 };
const opened: Clients[] = [];

function clientsAs(identity?: Identity): Clients {
  const clients = createClients(GATEWAY, identity ? { identity } : {});
  opened.push(clients);
  return clients;
}

const viewer = () => clientsAs({ userId: "ts-viewer", roles: ["viewer"] });
const hello = [{ role: "user", content: "Say hello.", name: "" }];

/** Rejects unless the call fails with `code`; returns the error for further checks. */
async function failsWith(call: Promise<unknown>, code: status): Promise<ServiceError> {
  const error = (await call.then(
    () => assert.fail(`expected gRPC status ${status[code]}, the call succeeded`),
    (e: ServiceError) => e,
  )) as ServiceError;
  assert.equal(error.code, code, `${status[error.code]}: ${error.details}`);
  return error;
}

/** Polls `probe` until it returns a value (not undefined), or fails after `seconds`. */
async function eventually<T>(seconds: number, what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

after(() => opened.forEach((clients) => clients.close()));

describe("without a server", () => {
  test("identity metadata: trusted headers or a bearer token", () => {
    const headers = identityMetadata({ userId: "ana", roles: ["operator", "viewer"] }).getMap();
    assert.deepEqual(headers, { "x-user-id": "ana", "x-user-roles": "operator,viewer" });
    assert.deepEqual(identityMetadata({ token: "abc.def.ghi" }).getMap(), { authorization: "Bearer abc.def.ghi" });
  });

  test("identity the gateway would misread is refused before any call", () => {
    assert.throws(() => identityMetadata({ userId: "" }), /userId is empty/);
    assert.throws(() => identityMetadata({ token: "" }), /token is empty/);
    assert.throws(() => identityMetadata({ userId: "ana", roles: ["admin,viewer"] }), /has a comma/);
    assert.throws(() => createClients("127.0.0.1:1", { identity: { userId: "ana", roles: [""] } }), /is empty/);
  });

  test("a gateway address as host:port or as the REST examples' BASE_URL", () => {
    assert.equal(gatewayTarget("127.0.0.1:8080").target, "127.0.0.1:8080");
    assert.equal(gatewayTarget("http://127.0.0.1:8080").target, "127.0.0.1:8080");
    assert.equal(gatewayTarget("https://llmops.example.com").target, "llmops.example.com:443");
    assert.throws(() => gatewayTarget("http://127.0.0.1:8080/llm-ops/v1"), /no path/);
  });
});

describe("through the gateway", { skip: GATEWAY ? false : "LLMOPS_URL is not set" }, () => {
  test("lists the catalog's models, the served chat model among them", LIVE, async () => {
    const models: Model[] = [];
    let pageToken = "";
    do {
      const page = await unary(viewer().registry, "listModels",
        ListModelsRequest.fromPartial({ status: "approved", pageSize: 100, pageToken }));
      models.push(...page.models);
      pageToken = page.nextPageToken;
    } while (pageToken);
    const chat = models.find((m) => m.id === CHAT_MODEL_ID);
    assert.ok(chat, `model ${CHAT_MODEL_ID} not among ${models.length} approved models`);
    assert.equal(chat.runtime, "llamacpp");
    assert.ok(chat.createdAt instanceof Date);
    assert.ok(models.every((m) => m.status === "approved"));
  });

  test("registers, approves and deploys a model; the endpoint serves it, then is deleted", LIVE, async () => {
    const researcher = clientsAs({ userId: "ts-researcher", roles: ["researcher"] });
    const reviewer = clientsAs({ userId: "ts-reviewer", roles: ["reviewer"] });
    const operator = clientsAs({ userId: "ts-operator", roles: ["operator"] });
    const created = await unary(researcher.registry, "createModel", CreateModelRequest.fromPartial({
      name: `ts-echo-${randomUUID().slice(0, 8)}`, version: "1", type: "chat", runtime: "echo",
      artifactUri: "builtin://echo", ownerTeam: "typescript", status: "pending_review",
      metadata: { chat_template: "{% for m in messages %}{{ m.content }} {% endfor %}" },
    }));
    assert.deepEqual([created.status, created.createdBy], ["pending_review", "ts-researcher"]);
    const approved = await unary(reviewer.registry, "updateModelStatus",
      UpdateModelStatusRequest.fromPartial({ id: created.id, status: "approved" }));
    assert.deepEqual([approved.status, approved.reviewedBy], ["approved", "ts-reviewer"]);

    const name = `ts-${randomUUID().slice(0, 8)}`;
    const deployed = await unary(operator.deployment, "deployEndpoint", DeployEndpointRequest.fromPartial({
      modelId: approved.id, environment: "dev", route: `/llm-ops/v1/serve/${name}`, minReplicas: 1, maxReplicas: 1,
    }));
    assert.deepEqual([deployed.name, deployed.status, deployed.revision], [name, "deploying", 1]);
    try {
      await eventually(180, `${name} healthy`, async () => {
        const endpoint: Endpoint = await unary(operator.deployment, "getEndpoint",
          GetEndpointRequest.fromPartial({ id: deployed.id }));
        assert.notEqual(endpoint.status, "failed", endpoint.statusReason);
        return endpoint.status === "healthy" ? endpoint : undefined;
      });
      const answer = await eventually(30, `the router serving ${name}`, () =>
        unary(viewer().inference, "chat", ChatRequest.fromPartial({
          name, messages: [{ role: "user", content: "echo these words" }], maxTokens: 3,
        })).catch((e: ServiceError) => (e.code === status.NOT_FOUND ? undefined : Promise.reject(e))));
      assert.equal(answer.choices[0].message?.content, "echo these words");
    } finally {
      const deleted = await unary(operator.deployment, "deleteEndpoint",
        DeleteEndpointRequest.fromPartial({ id: deployed.id }));
      assert.equal(deleted.status, "deleted");
    }
  });

  test("a unary chat on the real model", LIVE, async () => {
    const response = await unary(viewer().inference, "chat",
      ChatRequest.fromPartial({ name: CHAT_ENDPOINT, messages: hello, maxTokens: 8 }));
    assert.equal(response.object, "chat.completion");
    assert.equal(response.model, CHAT_ENDPOINT);
    const [choice] = response.choices;
    assert.equal(choice.message?.role, "assistant");
    assert.ok(choice.message?.content.trim(), "an empty answer");
    assert.ok(["stop", "length"].includes(choice.finishReason), choice.finishReason);
    const usage = response.usage!;
    assert.ok(usage.completionTokens >= 1 && usage.completionTokens <= 8, `${usage.completionTokens} tokens`);
    assert.equal(usage.totalTokens, usage.promptTokens + usage.completionTokens);
  });

  test("a streaming chat: deltas, then one final chunk with the finish reason and usage", LIVE, async () => {
    const stream = viewer().inference.chatStream(ChatStreamRequest.fromPartial({
      request: { name: CHAT_ENDPOINT, messages: hello, maxTokens: 12 },
    }));
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.ok(chunks.length > 2, `${chunks.length} chunks`);
    const last = chunks.at(-1)!;
    assert.ok(["stop", "length"].includes(last.choices[0].finishReason), last.choices[0].finishReason);
    assert.ok(last.usage!.completionTokens >= 1);
    assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finishReason === ""));
    assert.ok(chunks.map((c) => c.choices[0].delta?.content ?? "").join("").trim(), "no text streamed");
  });

  test("no identity: UNAUTHENTICATED", LIVE, async () => {
    await failsWith(unary(clientsAs().registry, "listModels", ListModelsRequest.fromPartial({})),
      status.UNAUTHENTICATED);
  });

  test("a viewer may not deploy: PERMISSION_DENIED, and nothing is deployed", LIVE, async () => {
    const name = `ts-${randomUUID().slice(0, 8)}`;
    await failsWith(unary(viewer().deployment, "deployEndpoint", DeployEndpointRequest.fromPartial({
      modelId: CHAT_MODEL_ID, environment: "dev", route: `/llm-ops/v1/serve/${name}`,
    })), status.PERMISSION_DENIED);
    const listed = await unary(viewer().deployment, "listEndpoints", ListEndpointsRequest.fromPartial({ name }));
    assert.deepEqual(listed.endpoints, []);
  });

  test("invalid replicas: INVALID_ARGUMENT with the reason", LIVE, async () => {
    const operator = clientsAs({ userId: "ts-operator", roles: ["operator"] });
    const error = await failsWith(unary(operator.deployment, "deployEndpoint", DeployEndpointRequest.fromPartial({
      modelId: randomUUID(), environment: "dev", route: "/llm-ops/v1/serve/ts-bad", minReplicas: 3, maxReplicas: 1,
    })), status.INVALID_ARGUMENT);
    assert.match(error.details, /replicas/i);
  });

  test("an unknown endpoint: NOT_FOUND, unary and streaming", LIVE, async () => {
    const inference = viewer().inference;
    await failsWith(unary(inference, "chat", ChatRequest.fromPartial({ name: "no-such-endpoint", messages: hello })),
      status.NOT_FOUND);
    const stream = inference.chatStream(ChatStreamRequest.fromPartial({
      request: { name: "no-such-endpoint", messages: hello },
    }));
    await failsWith((async () => { for await (const _ of stream); })(), status.NOT_FOUND);
  });

  test("metadata given to one call wins over the clients' identity", LIVE, async () => {
    const metadata = new Metadata();
    metadata.set("x-user-id", "ts-override");
    metadata.set("x-user-roles", "researcher");
    const model = await new Promise<Model>((resolve, reject) => {
      viewer().registry.createModel(CreateModelRequest.fromPartial({
        name: `ts-override-${randomUUID().slice(0, 8)}`, version: "1", type: "chat", runtime: "echo",
        artifactUri: "builtin://echo", ownerTeam: "typescript",
      }), metadata, (error, response) => (error ? reject(error) : resolve(response)));
    });
    assert.deepEqual([model.createdBy, model.status], ["ts-override", "draft"]);
  });
});
