#!/usr/bin/env node
// Stream a generation from meshllm's Generation service (meshllm.v1.Generation/GenerateStream).
//
//   node generate.js [--address HOST:PORT] [--chat] [--max-tokens N] [--temperature T] [--seed S]
//                    [--api-key KEY] [--tls-ca CA.pem] "TEXT"
//
// Text deltas go to stdout as they arrive; the finish reason and token counts go to stderr.
const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function parseArgs(argv) {
  const opts = { address: "127.0.0.1:50053", chat: false, maxTokens: 64, temperature: 0, seed: null,
                 apiKey: process.env.MESHLLM_API_KEY || "", tlsCa: "", text: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--address") opts.address = argv[++i];
    else if (a === "--chat") opts.chat = true;
    else if (a === "--max-tokens") opts.maxTokens = parseInt(argv[++i], 10);
    else if (a === "--temperature") opts.temperature = parseFloat(argv[++i]);
    else if (a === "--seed") opts.seed = argv[++i];
    else if (a === "--api-key") opts.apiKey = argv[++i];
    else if (a === "--tls-ca") opts.tlsCa = argv[++i];
    else if (opts.text === null) opts.text = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (opts.text === null) throw new Error("usage: node generate.js [options] \"TEXT\"");
  return opts;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const protos = path.resolve(__dirname, "..", "..", "protos");
  const definition = protoLoader.loadSync(path.join(protos, "meshllm", "v1", "generation.proto"),
    { includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  const meshllm = grpc.loadPackageDefinition(definition).meshllm.v1;
  const credentials = opts.tlsCa ? grpc.credentials.createSsl(fs.readFileSync(opts.tlsCa))
                                 : grpc.credentials.createInsecure();
  const client = new meshllm.Generation(opts.address, credentials);

  const request = {
    sampling: { temperature: opts.temperature },
    stopping: { max_new_tokens: opts.maxTokens },
  };
  if (opts.seed !== null) request.sampling.seed = opts.seed;
  if (opts.chat) request.chat = { messages: [{ role: "user", content: opts.text }] };
  else request.text = opts.text;

  const metadata = new grpc.Metadata();
  if (opts.apiKey) metadata.add("authorization", `Bearer ${opts.apiKey}`);
  const call = client.GenerateStream(request, metadata);
  call.on("data", (response) => {
    if (response.text) process.stdout.write(response.text);
    if (response.finish_reason && response.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
      const u = response.usage || {};
      process.stderr.write(`\n[${response.finish_reason} prompt=${u.prompt_tokens} ` +
                           `completion=${u.completion_tokens} cached=${u.cached_prompt_tokens}]\n`);
    }
  });
  call.on("error", (err) => {
    process.stderr.write(`meshllm: ${grpc.status[err.code]}: ${err.details}\n`);
    process.exitCode = 1;
  });
  call.on("end", () => client.close());
}

try {
  main();
} catch (err) {
  process.stderr.write(`${err.message}\n`);
  process.exitCode = 2;
}
