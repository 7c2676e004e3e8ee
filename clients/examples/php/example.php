<?php
function post(string $path, array $request): array {
    $ch = curl_init("http://localhost$path");
    curl_setopt_array($ch, [
        CURLOPT_UNIX_SOCKET_PATH => getenv("SIDKEYD_SOCKET"),
        CURLOPT_POSTFIELDS => json_encode($request),
        CURLOPT_HTTPHEADER => ["Content-Type: application/json"],
        CURLOPT_RETURNTRANSFER => true,
    ]);
    $body = curl_exec($ch);
    if ($body === false || curl_getinfo($ch, CURLINFO_RESPONSE_CODE) !== 200) {
        throw new RuntimeException(curl_error($ch) ?: $body);
    }
    return json_decode($body, true);
}

$signed = post("/v1/sign", ["environment" => "sandbox"]);
$verified = post("/v1/verify", ["environment" => "sandbox",
    "timestamp" => $signed["timestamp"], "signature" => $signed["signature"]]);
echo json_encode(["signed" => $signed, "verified" => $verified]), "\n";
