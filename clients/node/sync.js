"use strict";
// Synchronous calls to sidkeyd, for APIs that must answer at once (smile-identity-core's
// generate_signature with a caller's timestamp, confirm_signature).
//
// A worker thread holds the connection; the calling thread posts the request, blocks in
// Atomics.wait until the worker stores the request's id in a shared flag, then takes the
// answer with receiveMessageOnPort. Blocking costs one round trip to the daemon (about
// 0.1 ms, clients/node/README.md), with no process spawned per call.

const path = require("node:path");
const { Worker, MessageChannel, receiveMessageOnPort } = require("node:worker_threads");
const { DaemonUnavailableError, RequestFailedError, ClientError, defaultSocketPath } =
  require("./index.js");

class SyncClient {
  constructor({ socketPath, timeoutMs = 5000 } = {}) {
    this.socketPath = socketPath || defaultSocketPath();
    this.timeoutMs = timeoutMs;
    this.nextId = 0;
    this.flag = new Int32Array(new SharedArrayBuffer(4));
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(path.join(__dirname, "sync-worker.js"), {
      workerData: { port: port2, flag: this.flag, socketPath: this.socketPath, timeoutMs },
      transferList: [port2],
    });
    // Neither the worker nor its port keeps the process alive.
    this.worker.unref();
    this.port.unref();
  }

  sign(environment, timestamp) {
    return this.call("sign", environment, timestamp);
  }

  verify(environment, timestamp, signature) {
    return this.call("verify", environment, timestamp, signature);
  }

  call(method, ...args) {
    // Ids wrap below 2^31 and are never 0, the flag's resting value.
    const id = (this.nextId = (this.nextId % 0x7ffffffe) + 1);
    this.port.postMessage({ id, method, args });
    const deadline = Date.now() + this.timeoutMs + 1000;
    for (;;) {
      // Read the flag before looking at the port: an answer posted after the look changes
      // the flag, so the wait below returns at once instead of missing the wake-up.
      const seen = Atomics.load(this.flag, 0);
      const answer = receiveMessageOnPort(this.port);
      if (answer) {
        if (answer.message.id === id) return unwrap(answer.message);
        continue; // the late answer to a call that timed out
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new DaemonUnavailableError(`sidkeyd did not answer within ${this.timeoutMs} ms`);
      }
      Atomics.wait(this.flag, 0, seen, left);
    }
  }

  close() {
    return this.worker.terminate();
  }
}

function unwrap({ ok, value, error }) {
  if (ok) return value;
  if (error.name === "RequestFailedError") {
    const failed = new RequestFailedError(error.status, error.code, "");
    failed.message = error.message;
    throw failed;
  }
  if (error.name === "DaemonUnavailableError") throw new DaemonUnavailableError(error.message);
  throw new ClientError(error.message);
}

module.exports = { SyncClient };
