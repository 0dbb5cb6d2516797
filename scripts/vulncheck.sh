#!/usr/bin/env bash
# Runs govulncheck against the Go vulnerability database. The database's
# usual host is not reachable from CI, so it is built locally from the
# golang.org/x/vulndb module (fetched through the Go module proxy) with that
# module's own indexdb command, and cached under .tools/vulndb.
set -euo pipefail
cd "$(dirname "$0")/.."
GOVULNCHECK_VERSION="${GOVULNCHECK_VERSION:-v1.9.0}"
mkdir -p .tools/bin
export GOBIN="$PWD/.tools/bin"
if [[ ! -x .tools/bin/govulncheck ]]; then
  go install "golang.org/x/vuln/cmd/govulncheck@${GOVULNCHECK_VERSION}"
fi
dir="$(go mod download -json golang.org/x/vulndb@latest | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
ver="$(basename "$dir")"
db="$PWD/.tools/vulndb/$ver"
if [[ ! -f "$db/index/db.json" ]]; then
  rm -rf .tools/vulndb && mkdir -p "$db"
  (cd "$dir" && GOFLAGS=-mod=mod go run ./cmd/indexdb -vulns data/osv -out "$db")
fi
echo "govulncheck with ${ver}"
.tools/bin/govulncheck -db "file://$db" ./...
