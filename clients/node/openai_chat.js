#!/usr/bin/env node
// Talk to meshllm's OpenAI-compatible gateway with the official `openai` npm package: a unary
// chat, the same streamed, and a reply held to a JSON schema. Prints one JSON object.
//
//   node openai_chat.js --base-url http://127.0.0.1:8000/v1 [--api-key KEY] [--model NAME]
//                       [--question "What is the capital of France?"] [--max-tokens 48]
"use strict";

const OpenAI = require("openai");

function args(argv) {
  const out = { baseUrl: "http://127.0.0.1:8000/v1", apiKey: process.env.MESHLLM_API_KEY || "none",
                model: "", question: "What is the capital of France?", maxTokens: 48 };
  const names = { "--base-url": "baseUrl", "--api-key": "apiKey", "--model": "model", "--question": "question",
                  "--max-tokens": "maxTokens" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`unknown or incomplete option ${argv[i]}`);
    out[key] = key === "maxTokens" ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

async function main() {
  const opts = args(process.argv);
  const client = new OpenAI({ baseURL: opts.baseUrl, apiKey: opts.apiKey, maxRetries: 0, timeout: 300000 });
  const model = opts.model || (await client.models.list()).data[0].id;
  const messages = [{ role: "user", content: opts.question }];

  const unary = await client.chat.completions.create({ model, messages, max_tokens: opts.maxTokens, temperature: 0 });

  let streamed = "";
  let finish = null;
  let usage = null;
  const stream = await client.chat.completions.create({ model, messages, max_tokens: opts.maxTokens, temperature: 0,
                                                        stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      streamed += chunk.choices[0].delta.content || "";
      finish = chunk.choices[0].finish_reason || finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }

  const schema = { type: "object", properties: { answer: { type: "string", maxLength: 40 } }, required: ["answer"],
                   additionalProperties: false };
  const structured = await client.chat.completions.create({
    model, messages, max_tokens: 60, temperature: 0,
    response_format: { type: "json_schema", json_schema: { name: "answer", schema, strict: true } } });

  let error = null;
  try {
    await client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 4 });
  } catch (e) {
    error = { status: e.status, code: e.code };
  }

  console.log(JSON.stringify({
    model,
    unary: { text: unary.choices[0].message.content, finish_reason: unary.choices[0].finish_reason,
             usage: unary.usage },
    streamed: { text: streamed, finish_reason: finish, usage },
    structured: JSON.parse(structured.choices[0].message.content),
    error,
  }));
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
