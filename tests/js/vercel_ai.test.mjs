// Tool calling with the Vercel AI SDK (ai, @ai-sdk/openai's Chat Completions provider) against /v1
// (node --test; BASE_URL is the gateway, CHAT_MODEL the chat endpoint). Run by
// tests/e2e/test_tool_calls.py. The SDK runs each tool call it is given and, over steps, sends the
// results back: model -> tool -> model.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const provider = createOpenAI({
  baseURL: `${process.env.BASE_URL}/v1`,
  apiKey: "not-needed",
  headers: { "X-User-Id": "vercel-user", "X-User-Roles": "viewer" },
});
const model = provider.chat(process.env.CHAT_MODEL);
// One call an answer: the bundled 135M model would otherwise repeat it up to the bound.
const providerOptions = { openai: { parallelToolCalls: false } };

function weatherTool(cities) {
  return tool({
    description: "The weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      cities.push(city);
      return `Sunny in ${city}, 24 degrees.`;
    },
  });
}

test("a required call, run by the SDK", async () => {
  const cities = [];
  const result = await generateText({
    model, tools: { get_weather: weatherTool(cities) }, toolChoice: "required", temperature: 0, maxOutputTokens: 120,
    providerOptions, prompt: "What is the weather in Paris?",
  });
  assert.equal(result.finishReason, "tool-calls");
  assert.equal(result.toolCalls.length, 1);
  assert.equal(result.toolCalls[0].toolName, "get_weather");
  assert.equal(typeof result.toolCalls[0].input.city, "string");
  assert.deepEqual(result.toolResults.map((r) => r.output), [`Sunny in ${cities[0]}, 24 degrees.`]);
});

test("a streamed call: tool-call and tool-result parts, and no empty text part", async () => {
  const cities = [];
  const stream = streamText({
    model, tools: { get_weather: weatherTool(cities) }, toolChoice: "required", temperature: 0, maxOutputTokens: 120,
    providerOptions, prompt: "What is the weather in Oslo?",
  });
  const parts = [];
  for await (const part of stream.fullStream) parts.push(part.type);
  assert.ok(parts.includes("tool-call") && parts.includes("tool-result"), parts.join(","));
  assert.ok(!parts.includes("text-start"), parts.join(","));
  assert.equal(cities.length, 1);
});

test("an agent of two steps: the model calls the tool, then answers with its result in hand", async () => {
  const cities = [];
  const result = await generateText({
    model, tools: { get_weather: weatherTool(cities) }, temperature: 0, maxOutputTokens: 120, providerOptions,
    stopWhen: stepCountIs(2), prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
    prompt: "What is the weather in Paris?",
  });
  assert.deepEqual(result.steps.map((s) => s.finishReason), ["tool-calls", "stop"]);
  assert.equal(cities.length, 1);
  assert.ok(result.text.trim());
  const sent = JSON.stringify(result.steps[1].request.body); // the second request: the call and its result
  assert.ok(sent.includes('"role":"tool"') && sent.includes("Sunny in"), sent);
});
