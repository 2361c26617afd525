#!/usr/bin/env bash
# setup.sh runs this last. A zip whose labs need a server that npm ships (Lab 07: restate-server, a
# native binary pinned by package-lock.json) holds package.json and package-lock.json; then this installs
# npm when the image lacks it (apt: any Node.js will do, the binary does not run on Node) and runs
# `npm ci`, as `make setup` does. It never fails the build: without the binary those labs are
# reported NOT CHECKED with the reason, and every other lab is graded as usual.
set -uo pipefail
cd "$(dirname "$0")"
[ -f package-lock.json ] || exit 0
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if command -v npm >/dev/null 2>&1 && npm ci --no-audit --no-fund --ignore-scripts; then
    echo "npm packages installed: the labs that need restate-server can be graded"
else
    echo "warning: no npm here, or npm ci failed: labs that need restate-server will be reported NOT CHECKED" >&2
fi
exit 0
