// Tool calling with the official openai npm package against /v1 (node --test; BASE_URL is the
// gateway, CHAT_MODEL the chat endpoint). Run by tests/e2e/test_tool_calls.py, which says why the
// prompts are these.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: `${process.env.BASE_URL}/v1`,
  apiKey: "not-needed",
  defaultHeaders: { "X-User-Id": "node-user", "X-User-Roles": "viewer" },
  maxRetries: 0,
});
const model = process.env.CHAT_MODEL;
const ask = [{ role: "user", content: "What is the weather in Paris this week?" }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather forecast for a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", minLength: 1 }, days: { type: "integer", minimum: 1, maximum: 7 } },
      required: ["city", "days"],
      additionalProperties: false,
    },
  },
};
const time = {
  type: "function",
  function: { name: "get_time", parameters: { type: "object", properties: { zone: { type: "string" } }, required: ["zone"] } },
};

function checked(call) {
  assert.equal(call.type, "function");
  assert.equal(call.function.name, "get_weather");
  assert.ok(call.id.startsWith("call_"));
  const args = JSON.parse(call.function.arguments);
  assert.deepEqual(Object.keys(args).sort(), ["city", "days"]);
  assert.equal(typeof args.city, "string");
  assert.ok(Number.isInteger(args.days) && args.days >= 1 && args.days <= 7, `days ${args.days}`);
  return args;
}

test("a required call whose arguments validate", async () => {
  const completion = await client.chat.completions.create({
    model, messages: ask, tools: [weather], tool_choice: "required", parallel_tool_calls: false, temperature: 0,
    max_tokens: 120,
  });
  const choice = completion.choices[0];
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.content, null);
  assert.equal(choice.message.tool_calls.length, 1);
  checked(choice.message.tool_calls[0]);
});

test("a named function", async () => {
  const completion = await client.chat.completions.create({
    model, messages: ask, tools: [weather, time], tool_choice: { type: "function", function: { name: "get_time" } },
    parallel_tool_calls: false, temperature: 0, max_tokens: 120,
  });
  const [call] = completion.choices[0].message.tool_calls;
  assert.equal(call.function.name, "get_time");
  assert.equal(typeof JSON.parse(call.function.arguments).zone, "string");
});

// Prompts on which the bundled model decides by a wide margin (tests/e2e/test_tool_calls.py says how wide).
const calls = [
  { role: "system", content: "You are a weather assistant. Call get_weather for any question about the weather." },
  { role: "user", content: "Is it raining in London?" },
];
const greetings = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "Hello!" }, { role: "assistant", content: "Hello! How can I help you today?" },
  { role: "user", content: "Thanks, that is all." }, { role: "assistant", content: "You are welcome!" },
  { role: "user", content: "Good night!" },
];

test("auto: a call when the model makes one", async () => {
  const completion = await client.chat.completions.create({
    model, messages: calls, tools: [weather], tool_choice: "auto", parallel_tool_calls: false, temperature: 0,
    max_tokens: 120,
  });
  assert.equal(completion.choices[0].finish_reason, "tool_calls");
  assert.equal(completion.choices[0].message.tool_calls[0].function.name, "get_weather");
  assert.equal(typeof JSON.parse(completion.choices[0].message.tool_calls[0].function.arguments).city, "string");
});

test("auto: words when the model answers in words", async () => {
  const completion = await client.chat.completions.create({
    model, messages: greetings, tools: [weather], temperature: 0, max_tokens: 60,
  });
  const message = completion.choices[0].message;
  assert.ok(!message.tool_calls);
  assert.ok(message.content.trim() && !message.content.trimStart().startsWith("{"), message.content);
});

test("a streamed call, assembled by the package's stream helper", async () => {
  const stream = client.chat.completions.stream({
    model, messages: ask, tools: [weather], tool_choice: "required", parallel_tool_calls: false, temperature: 0,
    max_tokens: 120,
  });
  const final = await stream.finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, "tool_calls");
  checked(final.choices[0].message.tool_calls[0]);
});

test("the tool's result back for a second turn", async () => {
  const first = await client.chat.completions.create({
    model, messages: ask, tools: [weather], tool_choice: "required", parallel_tool_calls: false, temperature: 0,
    max_tokens: 120,
  });
  const message = first.choices[0].message;
  const call = message.tool_calls[0];
  const second = await client.chat.completions.create({
    model, tools: [weather], tool_choice: "none", temperature: 0, max_tokens: 40,
    messages: [...ask, message, { role: "tool", tool_call_id: call.id, content: "Sunny all week, 24 degrees." }],
  });
  assert.ok(!second.choices[0].message.tool_calls);
  assert.ok(second.choices[0].message.content.trim());
  const alone = await client.chat.completions.create({
    model, messages: ask, tools: [weather], tool_choice: "none", max_tokens: 1,
  });
  assert.ok(second.usage.prompt_tokens > alone.usage.prompt_tokens + 10, "the call and its result are in the prompt");
});
