"use strict";
// A client for sidkeyd's Unix socket: Node's standard library only, Node 18+.
//
//   const { Client } = require("./clients/node");
//   const client = new Client();                       // $SIDKEYD_SOCKET or the default
//   const { signature, timestamp } = await client.sign("production");
//
// One keep-alive connection per client (an http.Agent with one socket): requests made at the
// same time queue on it, as on the daemon's pipelining-free clients. The key never reaches Node:
// the daemon answers signatures only.

const http = require("node:http");

const DEFAULT_SOCKET_PATH = "/run/sidkeyd/sidkeyd.sock";
const DEFAULT_TIMEOUT_MS = 5000;

class ClientError extends Error {}

/** The daemon could not be reached, or closed the connection before answering. */
class DaemonUnavailableError extends ClientError {
  constructor(message, cause) {
    super(message, cause ? { cause } : undefined);
    this.name = "DaemonUnavailableError";
  }
}

/** The daemon answered with an error: `status` (HTTP) and `code` (docs/protocol.md). */
class RequestFailedError extends ClientError {
  constructor(status, code, message) {
    super(`sidkeyd refused the request: ${status} ${code}${message ? `: ${message}` : ""}`);
    this.name = "RequestFailedError";
    this.status = status;
    this.code = code;
  }
}

function defaultSocketPath() {
  return process.env.SIDKEYD_SOCKET || DEFAULT_SOCKET_PATH;
}

/** The HTTP status of a fetch/axios/http response (or an axios error), else undefined. */
function statusOf(response) {
  if (!response || typeof response !== "object") return undefined;
  for (const value of [response.status, response.statusCode, response.response?.status]) {
    if (Number.isInteger(value)) return value;
  }
  return undefined;
}

class Client {
  /**
   * @param {{socketPath?: string, timeoutMs?: number}} [options]
   */
  constructor({ socketPath, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    this.socketPath = socketPath || defaultSocketPath();
    this.timeoutMs = timeoutMs;
    // Idle sockets are unref'd by the agent, so a client never keeps a process alive.
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  }

  /** `{signature, timestamp, partner_id, environment, key_version, key_age_s}`. */
  sign(environment, timestamp) {
    const body = { environment };
    if (timestamp !== undefined && timestamp !== null) body.timestamp = timestamp;
    return this.call("POST", "/v1/sign", body);
  }

  /** `{valid, environment, key_version, current_key_version}`. */
  verify(environment, timestamp, signature) {
    return this.call("POST", "/v1/verify", { environment, timestamp, signature });
  }

  /** The raw `GET /v1/status` answer: `{environments: {name: {...}}}`. */
  status() {
    return this.call("GET", "/v1/status");
  }

  /** `{ok, body}`: ok when every environment can sign. */
  async health() {
    const { status, body } = await this.request("GET", "/v1/health");
    return { ok: status === 200, body };
  }

  /** Smile ID refused a signature: the daemon checks its backend and names the key to use. */
  report(environment, keyVersion, status) {
    return this.call("POST", "/v1/report", { environment, key_version: keyVersion, status });
  }

  /** Admins only: check the backend now. */
  refresh(environment) {
    return this.call("POST", "/v1/refresh", environment ? { environment } : {});
  }

  /**
   * Sign, `await send(signed)`; if Smile ID answered 401, report, sign again, retry once.
   * A key rotated at Smile ID is disabled at once: the report makes the daemon check now.
   */
  async sendSigned(environment, send, { rejected = (r) => statusOf(r) === 401 } = {}) {
    const signed = await this.sign(environment);
    const result = await send(signed);
    if (!rejected(result)) return result;
    await this.report(environment, signed.key_version, statusOf(result) ?? "rejected");
    return send(await this.sign(environment));
  }

  close() {
    this.agent.destroy();
  }

  async call(method, path, body) {
    const { status, body: payload } = await this.request(method, path, body);
    if (status !== 200) {
      const error = payload.error || {};
      throw new RequestFailedError(status, error.code || "unknown", error.message || "");
    }
    return payload;
  }

  /** `{status, body}` of one request; one retry when a kept-alive socket was closed. */
  async request(method, path, body) {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), "utf8");
    try {
      return await this.once(method, path, payload);
    } catch (error) {
      // The daemon closes idle connections (idle_timeout): a reused socket may be dead.
      if (!error.reusedSocket) throw this.unavailable(error);
      try {
        return await this.once(method, path, payload);
      } catch (again) {
        throw this.unavailable(again);
      }
    }
  }

  unavailable(error) {
    if (error instanceof ClientError) return error;
    return new DaemonUnavailableError(
      `sidkeyd at ${this.socketPath} cannot be reached: ${error.code || error.message}`,
      error,
    );
  }

  once(method, path, payload) {
    return new Promise((resolve, reject) => {
      const headers = { Host: "sidkeyd" };
      if (payload) {
        headers["Content-Type"] = "application/json";
        headers["Content-Length"] = payload.length;
      }
      const req = http.request(
        { socketPath: this.socketPath, path, method, headers, agent: this.agent },
        (res) => {
          const chunks = [];
          res.on("data", (chunk) => chunks.push(chunk));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            try {
              resolve({ status: res.statusCode, body: text ? JSON.parse(text) : {} });
            } catch (error) {
              reject(new ClientError(`sidkeyd answered ${res.statusCode} with no JSON`));
            }
          });
        },
      );
      req.setTimeout(this.timeoutMs, () =>
        req.destroy(new DaemonUnavailableError(`sidkeyd did not answer within ${this.timeoutMs} ms`)),
      );
      req.on("error", (error) => {
        error.reusedSocket = req.reusedSocket && !(error instanceof ClientError);
        reject(error);
      });
      req.end(payload);
    });
  }
}

module.exports = {
  Client,
  ClientError,
  DaemonUnavailableError,
  RequestFailedError,
  DEFAULT_SOCKET_PATH,
  defaultSocketPath,
  statusOf,
};
