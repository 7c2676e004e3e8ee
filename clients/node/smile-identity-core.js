"use strict";
// Makes smile-identity-core 3.x sign through sidkeyd: the SDK is given a placeholder API key
// and every signature comes from the daemon.
//
//   const sidkeyd = require("./clients/node/smile-identity-core.js");
//   const integration = sidkeyd.install({ environment: "production" });
//   await integration.ready;                 // optional: the first presigned signature is in
//   new IDApi(partnerId, "held-by-sidkeyd", 1).submit_job(...)
//
// The SDK signs synchronously (Signature.prototype.generate_signature), so:
// - without a timestamp (IDApi, Utilities, WebToken, pollJobStatus) it gets a presigned
//   signature for "now", kept fresh in the background: the call returns at once, no I/O;
// - with a caller's timestamp (WebApi.submit_job's upload) and for confirm_signature (the
//   job-status answers), it blocks in a SyncClient round trip to the daemon.
// A 401 from Smile ID for one of these signatures is reported to the daemon before the SDK's
// promise rejects, and the presigned signature is replaced, so a rotated key costs one call.
// Mechanism, limits and measurements: clients/node/README.md.

const path = require("node:path");
const { Client, RequestFailedError } = require("./index.js");
const { SyncClient } = require("./sync.js");

const ISSUED_REMEMBERED = 256;
let installed = null;

/**
 * @param {{environment: string, socketPath?: string, sdk?: object, refreshMs?: number,
 *   maxAgeMs?: number, idleMs?: number, timeoutMs?: number}} options
 * @returns {Integration}
 */
function install(options) {
  if (installed) throw new Error("sidkeyd is already installed into smile-identity-core");
  installed = new Integration(options);
  return installed;
}

class Integration {
  constructor({
    environment,
    socketPath,
    sdk,
    refreshMs = 1000, // a new presigned signature every second
    maxAgeMs = 2500, // older than this, a signature for "now" is fetched synchronously
    idleMs = 60000, // no refreshes after this long without a signature
    timeoutMs = 5000,
  } = {}) {
    if (typeof environment !== "string" || !environment) {
      throw new TypeError("install() needs the sidkeyd environment to sign for");
    }
    const smileId = sdk || loadSdk(); // first: nothing is started when the SDK is missing
    const axios = loadAxios(smileId);
    this.environment = environment;
    this.refreshMs = refreshMs;
    this.maxAgeMs = maxAgeMs;
    this.idleMs = idleMs;
    this.client = new Client({ socketPath, timeoutMs });
    this.sync = new SyncClient({ socketPath: this.client.socketPath, timeoutMs });
    this.stats = { presigned: 0, blocking: 0, verified: 0, refreshed: 0, reported: 0 };
    this.presigned = null; // {signature, timestamp, key_version, partner_id, fetchedAt}
    this.issued = new Map(); // signature -> key_version, for reports after a 401
    this.lastUsed = Date.now();
    this.refreshing = null;
    this.restore = [];
    this.patchSignature(smileId);
    this.patchAxios(axios);
    this.ready = this.refresh();
    this.ready.catch(() => {}); // a daemon not up yet is no unhandled rejection
    this.timer = setInterval(() => {
      if (Date.now() - this.lastUsed < this.idleMs) this.refresh().catch(() => {});
    }, refreshMs);
    this.timer.unref();
  }

  /** Undo install(): the SDK signs with its own key again. */
  uninstall() {
    clearInterval(this.timer);
    for (const undo of this.restore.reverse()) undo();
    this.restore = [];
    this.client.close();
    this.sync.close();
    if (installed === this) installed = null;
  }

  /** Fetch a presigned signature for "now" (concurrent callers share one request). */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.client
        .sign(this.environment)
        .then((signed) => {
          this.stats.refreshed += 1;
          this.keep(signed);
          return signed;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  keep(signed) {
    this.presigned = { ...signed, fetchedAt: Date.now() };
    this.remember(signed);
  }

  remember({ signature, key_version }) {
    this.issued.delete(signature);
    this.issued.set(signature, key_version);
    if (this.issued.size > ISSUED_REMEMBERED) this.issued.delete(this.issued.keys().next().value);
  }

  /** The SDK's generate_signature, answered by the daemon. */
  signatureFor(partnerId, timestamp) {
    this.lastUsed = Date.now();
    let signed;
    const fresh = this.presigned && Date.now() - this.presigned.fetchedAt < this.maxAgeMs;
    if (timestamp === undefined && fresh) {
      signed = this.presigned;
      this.stats.presigned += 1;
    } else if (timestamp === undefined) {
      signed = this.sync.sign(this.environment);
      this.stats.blocking += 1;
      this.keep(signed);
    } else {
      signed = this.sync.sign(this.environment, isoTimestamp(timestamp));
      this.stats.blocking += 1;
      this.remember(signed);
    }
    if (partnerId !== undefined && String(partnerId) !== signed.partner_id) {
      throw new Error(
        `the SDK's partner id ${partnerId} is not sidkeyd's ${signed.partner_id} for ` +
          `environment ${this.environment}`,
      );
    }
    return { signature: signed.signature, timestamp: signed.timestamp };
  }

  /** The SDK's confirm_signature (job-status answers): the daemon verifies. */
  confirm(timestamp, signature) {
    this.stats.verified += 1;
    try {
      return this.sync.verify(this.environment, isoTimestamp(timestamp), String(signature)).valid;
    } catch (error) {
      if (error instanceof RequestFailedError && error.status === 400) return false;
      throw error;
    }
  }

  /** After Smile ID refused one of our signatures: report it, then hold a new one. */
  async rejected(error) {
    if (error?.response?.status !== 401) return;
    const version = this.issued.get(signatureInBody(error.config?.data));
    if (version === undefined) return; // not signed by us
    this.stats.reported += 1;
    try {
      await this.client.report(this.environment, version, 401);
      if (this.presigned?.key_version === version) this.presigned = null;
      // The client's one connection answers in order: a refresh sent before the report was
      // answered before it, one sent after it is signed with the key held after the check.
      await this.refresh();
    } catch {
      // The daemon is unreachable: the SDK's own error is the one to surface.
    }
  }

  patchSignature(sdk) {
    const proto = sdk.Signature.prototype;
    const integration = this;
    const { generate_signature, confirm_signature } = proto;
    proto.generate_signature = function generateSignature(timestamp) {
      return integration.signatureFor(this.partnerID, timestamp);
    };
    proto.confirm_signature = function confirmSignature(timestamp, signature) {
      return integration.confirm(timestamp, signature);
    };
    this.restore.push(() => Object.assign(proto, { generate_signature, confirm_signature }));
  }

  patchAxios(axios) {
    // Interceptors are axios's public hook; instances made after install() get one too
    // (IDApi makes its own instance in its constructor).
    const onRejected = async (error) => {
      await this.rejected(error);
      throw error;
    };
    const defaultId = axios.interceptors.response.use(undefined, onRejected);
    const { create } = axios;
    axios.create = function createWithSidkeyd(...args) {
      const instance = create.apply(this, args);
      instance.interceptors.response.use(undefined, onRejected);
      return instance;
    };
    this.restore.push(() => {
      axios.interceptors.response.eject(defaultId);
      axios.create = create;
    });
  }
}

/** The SDK's timestamp rule: a number is epoch milliseconds; a string must parse. */
function isoTimestamp(timestamp) {
  if (typeof timestamp === "number") return new Date(timestamp).toISOString();
  new Date(timestamp).toISOString(); // throws RangeError like the SDK for an invalid one
  return String(timestamp);
}

function signatureInBody(data) {
  if (typeof data === "string") {
    try {
      return JSON.parse(data).signature;
    } catch {
      return undefined;
    }
  }
  return data && typeof data === "object" ? data.signature : undefined;
}

/** smile-identity-core as the application sees it: from its folder first, then from here. */
function resolveFromApp(request) {
  const paths = [process.cwd(), __dirname];
  if (require.main) paths.unshift(path.dirname(require.main.filename));
  return require.resolve(request, { paths });
}

function loadSdk() {
  return require(resolveFromApp("smile-identity-core"));
}

/** The axios the SDK itself requires: resolved from the folder the SDK was loaded from. */
function loadAxios(sdk) {
  const loaded = Object.values(require.cache).find((m) => m.exports === sdk);
  const from = loaded ? path.dirname(loaded.filename) : path.dirname(resolveFromApp("smile-identity-core"));
  return require(require.resolve("axios", { paths: [from] }));
}

module.exports = { install, Integration };
