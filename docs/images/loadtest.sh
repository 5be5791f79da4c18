#!/usr/bin/env bash
# Redraws docs/images/loadtest.png: `inferd serve models` (the default models and layout) on loopback, swept by
# `inferd loadtest` with V2 binary tensors at concurrency 1 to 8. Run from anywhere; the report's JSON, CSV and
# HTML go to /tmp/loadtest.*.
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=18410
.venv/bin/inferd serve models --port $PORT --no-access-log & server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null; do sleep 0.5; done
.venv/bin/inferd loadtest http://127.0.0.1:$PORT --concurrency 1,2,4,8 --window-ms 1000 \
  --json /tmp/loadtest.json --csv /tmp/loadtest.csv --plot docs/images/loadtest.png --html /tmp/loadtest.html
