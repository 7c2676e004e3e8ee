"use strict";
// Shared by the Node test scripts: each prints one JSON line (its result) last, for pytest.

const readline = require("node:readline");

let lines = null;

/** The next line on stdin: pytest's signal that it changed the world (rotated, stopped). */
function nextLine() {
  if (!lines) lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  return lines.next().then(({ value }) => value);
}

/** Print `{"waiting": what}` and wait for pytest's go-ahead on stdin. */
async function waitFor(what) {
  console.log(JSON.stringify({ waiting: what }));
  await nextLine();
}

function errorView(error) {
  return { name: error.name, status: error.status ?? error.response?.status, code: error.code };
}

function finish(result) {
  console.log(JSON.stringify(result));
  process.exit(0);
}

function main(run) {
  run().then(finish, (error) => {
    console.error(error);
    process.exit(1);
  });
}

module.exports = { waitFor, errorView, main };
