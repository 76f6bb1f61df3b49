// sdk.mjs: the OpenAI Node SDK (npm `openai`) against a running server.
// Usage: node sdk.mjs URL: completions and chat, streamed and not (the streamed text equals the
// non-streamed one for greedy and for a seed), logprobs in both shapes, and the SDK's typed
// errors for a bad parameter and for what ternpipe refuses (n > 16, anyOf); n = 3, json_schema.
import OpenAI from "openai";

const url = process.argv[2];
const fail = (m) => { console.log("FAIL " + m); process.exit(1); };
const client = new OpenAI({ baseURL: url + "/v1", apiKey: process.env.TERN_KEY || "none", maxRetries: 0 });
const models = await client.models.list();
const model = models.data[0].id;

for (const extra of [{ temperature: 0 }, { temperature: 0.9, seed: 42 }]) {
  const q = { model, prompt: "Once upon a time", max_tokens: 24, ...extra };
  const c = await client.completions.create(q);
  let t = "";
  for await (const ch of await client.completions.create({ ...q, stream: true })) t += ch.choices[0]?.text ?? "";
  if (!c.choices[0].text || t !== c.choices[0].text) fail(`completion stream ${JSON.stringify(t)} != ${JSON.stringify(c.choices[0].text)}`);
  const m = { model, messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 24, ...extra };
  const r = await client.chat.completions.create(m);
  let u = "";
  for await (const ch of await client.chat.completions.create({ ...m, stream: true })) u += ch.choices[0]?.delta?.content ?? "";
  if (!r.choices[0].message.content || u !== r.choices[0].message.content) fail(`chat stream ${JSON.stringify(u)} != ${JSON.stringify(r.choices[0].message.content)}`);
  console.log(`ok ${JSON.stringify(extra)}: completion ${JSON.stringify(c.choices[0].text.slice(0, 30))}..., chat ${JSON.stringify(u.slice(0, 30))}...; streamed == not`);
}
const lp = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0, logprobs: 3 });
const L = lp.choices[0].logprobs;
if (L.tokens.length !== 8 || L.token_logprobs.length !== 8 || Object.keys(L.top_logprobs[0]).length !== 3) fail("completion logprobs " + JSON.stringify(L));
const cl = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 });
const C = cl.choices[0].logprobs.content;
if (C.length !== cl.usage.completion_tokens || C[0].top_logprobs.length !== 2 || !(C[0].logprob <= 0)) fail("chat logprobs " + JSON.stringify(C));
console.log(`ok logprobs: completions ${L.token_logprobs.length} tokens x 3 alternatives, chat ${C.length} tokens x 2`);
const n3 = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 10, temperature: 1, seed: 7, n: 3 });
for (let i = 0; i < 3; i++) {
  const one = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 10, temperature: 1, seed: 7 + i });
  const c = n3.choices.find((x) => x.index === i);
  if (!c || c.message.content !== one.choices[0].message.content) fail(`n=3 choice ${i} != seed ${7 + i} alone`);
}
console.log(`ok n=3: choice i equals seed 7+i alone; usage ${JSON.stringify(n3.usage)}`);
const js = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "A pet, as JSON." }], max_tokens: 200, temperature: 0.9, seed: 3,
  response_format: { type: "json_schema", json_schema: { name: "pet", strict: true, schema: {
    type: "object", properties: { name: { type: "string", maxLength: 16 }, kind: { enum: ["cat", "dog"] }, age: { type: "integer" } },
    required: ["name", "kind", "age"], additionalProperties: false } } },
});
const pet = JSON.parse(js.choices[0].message.content);
if (typeof pet.name !== "string" || !["cat", "dog"].includes(pet.kind) || !Number.isInteger(pet.age)) fail("json_schema: " + js.choices[0].message.content);
console.log(`ok json_schema: ${js.choices[0].message.content}`);
for (const [what, q, param] of [
  ["top_p 1.5", { top_p: 1.5 }, "top_p"],
  ["n 17", { n: 17 }, "n"],
  ["anyOf", { response_format: { type: "json_schema", json_schema: { name: "x", schema: { anyOf: [{ type: "string" }] } } } }, "response_format"],
]) {
  try {
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 4, ...q });
    fail(what + " accepted");
  } catch (e) {
    if (!(e instanceof OpenAI.BadRequestError) || e.param !== param) fail(`${what}: got ${e.constructor.name} ${e.status} param ${e.param}: ${e.message}`);
    console.log(`ok ${what}: BadRequestError (param ${e.param}): ${e.message.slice(0, 90)}`);
  }
}
