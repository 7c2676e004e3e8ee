"use strict";
// The worker thread behind SyncClient: it owns a keep-alive Client, answers each request on
// its port, then wakes the waiting main thread through the shared flag.

const { workerData } = require("node:worker_threads");
const { Client } = require("./index.js");

const { port, flag, socketPath, timeoutMs } = workerData;
const client = new Client({ socketPath, timeoutMs });

port.on("message", async ({ id, method, args }) => {
  let answer;
  try {
    answer = { id, ok: true, value: await client[method](...args) };
  } catch (error) {
    answer = { id, ok: false, error: { name: error.name, message: error.message,
      status: error.status, code: error.code } };
  }
  port.postMessage(answer);
  Atomics.store(flag, 0, id);
  Atomics.notify(flag, 0);
});
