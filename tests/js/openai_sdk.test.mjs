// The official openai npm package against /v1 (node --test; BASE_URL is the gateway,
// CHAT_MODEL and EMBEDDING_MODEL the endpoints). Run by tests/e2e/test_openai_contract.py.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: `${process.env.BASE_URL}/v1`,
  apiKey: "not-needed",
  defaultHeaders: { "X-User-Id": "node-user", "X-User-Roles": "viewer" },
  maxRetries: 0,
});
const messages = [{ role: "user", content: "Say hello." }];

test("a unary chat", async () => {
  const completion = await client.chat.completions.create({
    model: process.env.CHAT_MODEL, messages, max_tokens: 8,
  });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.choices[0].message.role, "assistant");
  assert.ok(["stop", "length"].includes(completion.choices[0].finish_reason));
  assert.equal(completion.usage.total_tokens, completion.usage.prompt_tokens + completion.usage.completion_tokens);
});

test("a stream: finish_reason null until the last chunk, then one usage chunk", async () => {
  const stream = await client.chat.completions.create({
    model: process.env.CHAT_MODEL, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const usage = chunks.pop();
  assert.deepEqual(usage.choices, []);
  assert.ok(usage.usage.completion_tokens >= 1);
  const reasons = chunks.map((c) => c.choices[0].finish_reason);
  assert.deepEqual(reasons.slice(0, -1), reasons.slice(0, -1).map(() => null));
  assert.ok(["stop", "length"].includes(reasons.at(-1)));
  assert.ok(chunks.every((c) => c.usage === null));
});

test("embeddings, base64 as the package asks for them by default", async () => {
  const result = await client.embeddings.create({ model: process.env.EMBEDDING_MODEL, input: ["hello", "world"] });
  assert.deepEqual(result.data.map((d) => d.embedding.length), [384, 384]);
  assert.ok(result.data.every((d) => d.embedding.every(Number.isFinite)));
  const norm = Math.hypot(...result.data[0].embedding);
  assert.ok(norm > 0.5 && norm < 1.5, `norm ${norm}`);
});

test("an unknown model is a NotFoundError in OpenAI's shape", async () => {
  await assert.rejects(client.chat.completions.create({ model: "nope", messages }), (error) => {
    assert.ok(error instanceof OpenAI.NotFoundError);
    assert.equal(error.type, "not_found_error");
    return true;
  });
});
