#!/usr/bin/env bash
# Installs everything bulkscore and its test suite need, into ./.venv.
#
#   ./install.sh
#
# Debian's docker-compose (and chromium, for the browser tests) is installed (when apt-get is available and we are root) only so
# the tests can validate docker-compose.yml with a real compose parser; no Docker engine is
# needed. torch is pinned to 2.13.0 in pyproject.toml: on the development machines a CPU
# build of exactly that version is on disk, and an unpinned torch would pull a multi-GB CUDA
# build.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v docker-compose >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
      || echo "install.sh: could not install docker-compose (compose file test will fail)" >&2
  else
    echo "install.sh: please install docker-compose (Debian package) for the compose file test" >&2
  fi
fi

# Debian's chromium and chromedriver, for the web pages' browser tests
# (tests/integration/test_web_browser.py drives them with Selenium; no browser download).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "install.sh: could not install chromium (browser tests will fail)" >&2
  else
    echo "install.sh: please install chromium and chromium-driver (Debian packages) for the browser tests" >&2
  fi
fi

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,worker,keras]"
echo "installed: $(.venv/bin/bulkscore --help >/dev/null && echo 'bulkscore CLI ready in .venv/bin')"
