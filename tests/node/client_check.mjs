// Drives route-llm with the official OpenAI Node SDK and prints what it saw as one JSON object.
// Usage: node client_check.mjs <base URL ending in /v1>. Run by tests/proxy/edge/test_node_sdk.py, which asserts
// on the output; this script only reports, so a failure shows up there with the whole report.
import OpenAI from "openai";

// A 30 s request timeout: a stuck call becomes that step's error in the report instead of a hung process.
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0, timeout: 30_000 });
const report = {};
const question = [{ role: "user", content: "What is the capital of France?" }];

async function step(name, fn) {
  try {
    report[name] = await fn();
  } catch (err) {
    report[name] = { error: String(err && err.message ? err.message : err), status: err && err.status };
  }
}

await step("chat", async () => {
  const { data, response } = await client.chat.completions
    .create({ model: "auto-cheap", messages: question })
    .withResponse();
  return { model: data.model, content: data.choices[0].message.content, tier: response.headers.get("x-route-llm-tier") };
});

await step("chat_stream", async () => {
  const stream = await client.chat.completions.create({ model: "gemini-1.5-flash", messages: question, stream: true });
  const ids = new Set();
  let content = "";
  for await (const chunk of stream) {
    ids.add(chunk.id);
    content += chunk.choices[0]?.delta?.content ?? "";
  }
  return { ids: ids.size, content };
});

await step("models", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  const auto = await client.models.retrieve("auto");
  return { ids, retrieved: auto.id };
});

await step("responses", async () => {
  const r = await client.responses.create({ model: "gemini-1.5-flash", input: "Hi there", instructions: "Be brief." });
  return { status: r.status, output_text: r.output_text, model: r.model };
});

await step("responses_stream", async () => {
  const stream = client.responses.stream({ model: "gemini-1.5-flash", input: "Hi there" });
  const types = [];
  let deltas = "";
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await stream.finalResponse();
  return { first: types[0], last: types[types.length - 1], deltas, output_text: final.output_text };
});

await step("bad_request", async () => {
  await client.responses.create({ model: "auto", input: "x", previous_response_id: "resp_1" });
  return { error: "no error" };
});

console.log(JSON.stringify(report));
