"use strict";
// The SDK's own flows, run against the fake Smile ID server with a placeholder key.
//
//   node tests/node/sdk_flows.js [--without-sidkeyd] [--rotation] [--flows=a,b]
//
// env: SIDKEYD_SOCKET, SMILEID_SERVER (host:port/v1; the SDK adds https://), PARTNER_ID.
// Prints {"rounds": [{flow: {ok, statuses}}], "stats": {...}}. With --rotation it runs every
// flow once, prints {"waiting": "rotation"}, waits for a line on stdin (pytest rotates the key
// at the fake and in the daemon's backend), then runs them all again at once, each retried
// once after a failure, as a service would.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { IDApi, WebApi, Utilities } = require("smile-identity-core");
const { install } = require("../../clients/node/smile-identity-core.js");
const { waitFor, errorView, main } = require("./lib.js");

const PLACEHOLDER_KEY = "held-by-sidkeyd";
const CALLBACK = "https://callback.example/smileid";
const server = process.env.SMILEID_SERVER;
const partnerId = process.env.PARTNER_ID || "085";
const selfie = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "sdk-flows-")), "selfie.jpg");
fs.writeFileSync(selfie, Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0xff, 0xd9]));
let jobs = 0;

function params(jobType) {
  jobs += 1;
  return { user_id: `user-${jobs}`, job_id: `job-${jobs}`, job_type: jobType };
}

const FLOWS = {
  id_api: () =>
    new IDApi(partnerId, PLACEHOLDER_KEY, server).submit_job(params(5), {
      country: "NG",
      id_type: "BVN",
      id_number: "00000000000",
    }),
  web_api_upload: () =>
    new WebApi(partnerId, CALLBACK, PLACEHOLDER_KEY, server).submit_job(
      params(4),
      [{ image_type_id: 0, image: selfie }],
      {},
      { return_job_status: true },
    ),
  job_status: () =>
    new Utilities(partnerId, PLACEHOLDER_KEY, server).get_job_status("user-0", "job-0"),
  web_token: () =>
    new WebApi(partnerId, CALLBACK, PLACEHOLDER_KEY, server).get_web_token({
      ...params(4),
      product: "biometric_kyc",
    }),
  // maxRetries 0: the SDK reuses one signature for all its retries (clients/node/README.md).
  poll_job_status: () =>
    new IDApi(partnerId, PLACEHOLDER_KEY, server).pollJobStatus(params(5), 0, 10),
};

/** Run one flow up to `attempts` times; record each outcome. */
async function run(flow, attempts) {
  const statuses = [];
  for (let i = 0; i < attempts; i += 1) {
    try {
      const answer = await FLOWS[flow]();
      statuses.push(200);
      return { ok: true, statuses, complete: answer.job_complete ?? null };
    } catch (error) {
      statuses.push(errorView(error).status ?? error.message);
    }
  }
  return { ok: false, statuses };
}

async function round(attempts, { together = false } = {}) {
  const only = process.argv.find((arg) => arg.startsWith("--flows="));
  const names = only ? only.slice("--flows=".length).split(",") : Object.keys(FLOWS);
  const results = together
    ? await Promise.all(names.map((name) => run(name, attempts)))
    : await names.reduce(
        async (done, name) => [...(await done), await run(name, attempts)],
        Promise.resolve([]),
      );
  return Object.fromEntries(names.map((name, i) => [name, results[i]]));
}

main(async () => {
  const args = process.argv.slice(2);
  const integration = args.includes("--without-sidkeyd")
    ? null
    : install({ environment: process.env.SIDKEYD_ENVIRONMENT || "sandbox" });
  if (integration) await integration.ready;
  const rounds = [await round(1)];
  if (args.includes("--rotation")) {
    await waitFor("rotation");
    rounds.push(await round(2, { together: true }));
  }
  return { rounds, stats: integration ? integration.stats : null };
});
