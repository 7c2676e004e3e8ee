#!/bin/sh
set -eu
sidkeyd() { curl -sS --fail-with-body --unix-socket "$SIDKEYD_SOCKET" "http://localhost$1" -d "$2"; }
signed=$(sidkeyd /v1/sign '{"environment": "sandbox"}')
verified=$(sidkeyd /v1/verify "$(echo "$signed" | jq -c '{environment, timestamp, signature}')")
echo "{\"signed\": $signed, \"verified\": $verified}"
