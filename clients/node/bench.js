"use strict";
// How long smile-identity-core's synchronous generate_signature() holds the event loop, per
// mechanism, in one run against a running daemon:
//
//   SIDKEYD_SOCKET=/run/sidkeyd/sidkeyd.sock node clients/node/bench.js [environment]
//
// (smile-identity-core must be resolvable, e.g. NODE_PATH=<its node_modules>.) A synchronous
// call's duration is exactly the time the event loop cannot run anything else.

const { execFileSync } = require("node:child_process");
const path = require("node:path");
const { Client } = require("./index.js");
const { install } = require("./smile-identity-core.js");

const environment = process.argv[2] || "sandbox";
const sdk = require("smile-identity-core");

function timeSync(n, call) {
  const samples = new Float64Array(n);
  for (let i = 0; i < n; i += 1) {
    const start = process.hrtime.bigint();
    call();
    samples[i] = Number(process.hrtime.bigint() - start) / 1e3;
  }
  return summary(samples);
}

async function timeAsync(n, call) {
  const samples = new Float64Array(n);
  for (let i = 0; i < n; i += 1) {
    const start = process.hrtime.bigint();
    await call();
    samples[i] = Number(process.hrtime.bigint() - start) / 1e3;
  }
  return summary(samples);
}

function summary(samples) {
  const sorted = Array.from(samples).sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { n: sorted.length, mean, p50: at(0.5), p99: at(0.99) };
}

const HELPER = `
const { Client } = require(${JSON.stringify(path.join(__dirname, "index.js"))});
const c = new Client();
c.sign(process.argv[1], process.argv[2]).then((s) => { process.stdout.write(JSON.stringify(s)); c.close(); });
`;

async function main() {
  const partnerId = (await new Client().sign(environment)).partner_id;
  const local = new sdk.Signature(partnerId, "bench-local-key-not-real");
  const rows = [];
  // Baseline first, before install() replaces the SDK's signing.
  rows.push(["SDK's own signing (local key, no sidkeyd)", timeSync(100000, () => local.generate_signature())]);
  rows.push([
    "execFileSync of a node helper, caller timestamp (rejected alternative)",
    timeSync(30, () =>
      JSON.parse(execFileSync(process.execPath, ["-e", HELPER, environment, new Date().toISOString()])),
    ),
  ]);

  const integration = install({ environment, sdk });
  await integration.ready;
  const signer = new sdk.Signature(partnerId, "held-by-sidkeyd");
  rows.push(["install(): presigned, no timestamp", timeSync(100000, () => signer.generate_signature())]);
  rows.push([
    "install(): caller timestamp (worker + Atomics.wait)",
    timeSync(3000, () => signer.generate_signature(new Date().toISOString())),
  ]);
  rows.push([
    "install(): confirm_signature (worker + Atomics.wait)",
    timeSync(3000, () => signer.confirm_signature("2026-01-01T00:00:00.000Z", "AAAA")),
  ]);
  const client = new Client();
  rows.push(["Client.sign awaited (async; the loop keeps running)", await timeAsync(3000, () => client.sign(environment))]);

  console.log(`node ${process.version}, ${require("node:os").cpus().length} CPUs, environment ${environment}`);
  console.log("| mechanism | calls | mean µs | p50 µs | p99 µs |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  for (const [name, s] of rows) {
    const f = (x) => (x < 10 ? x.toFixed(2) : x.toFixed(0));
    console.log(`| ${name} | ${s.n} | ${f(s.mean)} | ${f(s.p50)} | ${f(s.p99)} |`);
  }
  console.log(JSON.stringify(integration.stats));
  integration.uninstall();
  client.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
