#!/usr/bin/env bash
# Installs Node.js and npm from Debian's packages when missing: the x402 and
# MPP interop tests and the e2e payment tests run the protocols' real client
# SDKs (npm packages, pinned by lockfiles under */testdata/).
set -euo pipefail
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
node --version
