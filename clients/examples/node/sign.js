// Ask sidkeyd for a Smile ID signature: Node 18+, no dependencies.
//   node sign.js [environment]        (socket: $SIDKEYD_SOCKET or /run/sidkeyd/sidkeyd.sock)
// Prints the daemon's JSON answer; exits 1 when the daemon refuses, 3 when it cannot be reached.
const http = require("node:http");

const body = JSON.stringify({ environment: process.argv[2] || "production" });
const request = http.request(
  {
    socketPath: process.env.SIDKEYD_SOCKET || "/run/sidkeyd/sidkeyd.sock",
    path: "/v1/sign",
    method: "POST",
    headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) },
  },
  (response) => {
    let text = "";
    response.setEncoding("utf8");
    response.on("data", (chunk) => (text += chunk));
    response.on("end", () => {
      if (response.statusCode === 200) return console.log(text); // {signature, timestamp, ...}
      console.error(`sidkeyd refused: ${response.statusCode} ${text}`);
      process.exitCode = 1;
    });
  },
);
request.on("error", (error) => {
  console.error(`sidkeyd cannot be reached: ${error.message}`);
  process.exitCode = 3;
});
request.end(body);
