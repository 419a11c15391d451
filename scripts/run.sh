#!/usr/bin/env bash
# Runs stompline with the web app: builds client-js/web when it is missing
# or older than its sources (installing client-js's npm packages first when
# needed), then starts `cargo run --release -- serve` with any arguments
# given here. Open http://127.0.0.1:8080/ afterwards.
#
# Without Node.js/npm the server still starts; / then says how to build the
# app.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_web() {
    local js=client-js dist=client-js/web/dist/index.html
    if ! command -v npm >/dev/null; then
        echo "run.sh: npm not found, starting without the web app (install Node.js 20+ and npm to get it)" >&2
        return 0
    fi
    # npm keeps its own record of an install in node_modules/.package-lock.json.
    if [ ! -f "$js/node_modules/.package-lock.json" ] ||
        [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
        echo "run.sh: installing client-js packages (npm ci)" >&2
        (cd "$js" && npm ci --no-audit --no-fund)
    fi
    if [ ! -f "$dist" ] || [ -n "$(find "$js/web/src" "$js/web/index.html" "$js/packages/client/src" \
        -newer "$dist" -print -quit)" ]; then
        echo "run.sh: building the web app (npm run build)" >&2
        (cd "$js" && npm run build)
    fi
}

build_web
exec cargo run --release -- serve "$@"
