#!/usr/bin/env bash
# Runs the whole test suite (after setting everything up): real etcd, real kernel devices, network
# namespaces. Extra arguments go to vitest, e.g. `scripts/test.sh test/vxlan-cluster.test.ts`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@" || status=$?

# One plain closing line with the counts, whatever the reporter printed above.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`\n${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' "$report" || true
exit $status
