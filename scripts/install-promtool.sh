#!/usr/bin/env bash
# Puts promtool (the Prometheus rule checker deploy/'s tests run) in
# .tools/bin, from Debian's prometheus package: only the binary is
# extracted, nothing is installed or started. Building it from its Go
# module instead takes many minutes. PROMTOOL overrides the destination.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${PROMTOOL:-$PWD/.tools/bin/promtool}"
if [[ -x "$dest" ]]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
  $SUDO apt-get update -qq
  (cd "$tmp" && apt-get download prometheus >/dev/null)
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$(dirname "$dest")"
cp "$tmp/x/usr/bin/promtool" "$dest"
"$dest" --version | head -1
