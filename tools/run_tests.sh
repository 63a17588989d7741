#!/usr/bin/env bash
# Install what the tests need (pinned Python packages; Debian's Chromium for the browser test),
# then lint and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium missing and cannot be installed here; the browser test will skip"
  fi
fi

ruff check .
python -m pytest -ra "$@"
