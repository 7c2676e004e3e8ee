"use strict";
// One named check of clients/node per run: `node tests/node/client_checks.js NAME`.
// env: SIDKEYD_SOCKET, PARTNER_ID. Prints one JSON result line last (pytest asserts on it).

const { Client } = require("../../clients/node");
const { install } = require("../../clients/node/smile-identity-core.js");
const { waitFor, errorView, main } = require("./lib.js");

const ENV = "sandbox";
const PLACEHOLDER_KEY = "held-by-sidkeyd";
const partnerId = process.env.PARTNER_ID || "085";

async function refusal(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return errorView(error);
  }
}

function thrown(call) {
  try {
    call();
    return null;
  } catch (error) {
    return { ...errorView(error), message: error.message };
  }
}

/** The SDK's Signature class, as the SDK's own modules use it. */
function sdkSignature() {
  return new (require("smile-identity-core").Signature)(partnerId, PLACEHOLDER_KEY);
}

const CHECKS = {
  async client() {
    const client = new Client();
    const now = await client.sign(ENV);
    // "now" written in +01:00: signed exactly as given.
    const plusOne = `${new Date(Date.now() + 3600e3).toISOString().slice(0, 23)}+01:00`;
    const given = await client.sign(ENV, plusOne);
    const result = {
      now,
      given,
      valid: await client.verify(ENV, now.timestamp, now.signature),
      invalid: await client.verify(ENV, now.timestamp, "AAAA" + now.signature.slice(4)),
      environments: Object.keys((await client.status()).environments),
      health: (await client.health()).ok,
      unknown: await refusal(client.sign("nowhere")),
      bad_timestamp: await refusal(client.sign(ENV, "2026-01-01 00:00:00")),
    };
    client.close();
    return result;
  },

  async unreachable() {
    return { error: await refusal(new Client({ socketPath: "/nonexistent/sidkeyd.sock" }).sign(ENV)) };
  },

  async keep_alive() {
    // The daemon closes idle connections (idle_timeout): wait for that, counting sockets.
    const client = new Client();
    const sockets = [];
    const connect = client.agent.createConnection.bind(client.agent);
    client.agent.createConnection = (...args) => {
      const socket = connect(...args);
      sockets.push(new Promise((resolve) => socket.on("close", resolve)));
      return socket;
    };
    for (let i = 0; i < 3; i += 1) await client.sign(ENV);
    const alive = setInterval(() => {}, 1000); // idle sockets are unref'd: stay for the close
    await Promise.all(sockets);
    clearInterval(alive);
    return { sockets: sockets.length, pid: process.pid };
  },

  async send_signed() {
    // The first send is "refused" as Smile ID would after a rotation; the retry is signed anew.
    const client = new Client();
    const sent = [];
    const answer = await client.sendSigned(ENV, async (signed) => {
      sent.push(signed.key_version);
      return { status: sent.length === 1 ? 401 : 200 };
    });
    client.close();
    return { sent, status: answer.status };
  },

  async presigned_without_io() {
    // pytest stops the daemon (SIGSTOP) at the wait: a presigned signature must still be
    // answered at once; a caller's timestamp needs the daemon and times out.
    const integration = install({ environment: ENV, maxAgeMs: 600e3, timeoutMs: 300 });
    const ready = await integration.ready;
    await waitFor("daemon stopped");
    const signatures = Array.from({ length: 100 }, () => sdkSignature().generate_signature());
    const withTimestamp = thrown(() => sdkSignature().generate_signature(new Date().toISOString()));
    return { ready, signatures, with_timestamp: withTimestamp, stats: integration.stats };
  },

  async caller_timestamp() {
    const integration = install({ environment: ENV });
    await integration.ready;
    const iso = new Date().toISOString().replace("Z", "+00:00");
    const epochMs = Date.now();
    return {
      iso,
      epoch_ms: epochMs,
      signed: sdkSignature().generate_signature(iso),
      signed_epoch: sdkSignature().generate_signature(epochMs),
      invalid: thrown(() => sdkSignature().generate_signature("not a time")),
      stats: integration.stats,
    };
  },

  async stale_presigned() {
    // maxAgeMs 0: no presigned signature is ever fresh enough, every call asks the daemon.
    const integration = install({ environment: ENV, maxAgeMs: 0 });
    const presigned = await integration.ready;
    const signed = sdkSignature().generate_signature();
    return { presigned_timestamp: presigned.timestamp, signed, stats: integration.stats };
  },

  async partner_mismatch() {
    const integration = install({ environment: ENV });
    await integration.ready;
    const Signature = require("smile-identity-core").Signature;
    return { error: thrown(() => new Signature("999", PLACEHOLDER_KEY).generate_signature()) };
  },

  async confirm() {
    const integration = install({ environment: ENV });
    await integration.ready;
    const signed = sdkSignature().generate_signature();
    const wrong = "AAAA" + signed.signature.slice(4);
    return {
      valid: sdkSignature().confirm_signature(signed.timestamp, signed.signature),
      wrong: sdkSignature().confirm_signature(signed.timestamp, wrong),
      too_long: sdkSignature().confirm_signature(signed.timestamp, "A".repeat(200)),
      stats: integration.stats,
    };
  },

  async uninstall() {
    const integration = install({ environment: ENV });
    const daemon = await integration.ready;
    integration.uninstall();
    return { daemon, local: sdkSignature().generate_signature(daemon.timestamp) };
  },
};

if (process.argv[2] === "exits_when_idle") {
  // No process.exit: the process must end by itself while the connection, the refresh
  // timer and the sync worker are all still there.
  const integration = install({ environment: ENV });
  integration.ready.then(async (signed) => {
    await new Client().sign(ENV);
    sdkSignature().generate_signature(new Date().toISOString());
    console.log(JSON.stringify({ signed: Boolean(signed.signature) }));
  });
} else {
  main(() => CHECKS[process.argv[2]]());
}
