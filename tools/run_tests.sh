#!/usr/bin/env bash
# Install what the tests need, then lint and run the whole test suite. Extra arguments go to pytest.
# Installs into a virtual environment: the active one, else .venv (made with python3 when missing;
# a stock Debian/Ubuntu python3 refuses a bare pip install, PEP 668): the pinned packages of
# requirements-dev.txt and pneumo itself (pip install -e .); as root also Debian's Chromium for the
# browser test, Orthanc, its DICOMweb plugin and dicom3tools for the PACS tests, and PostgreSQL
# for the audit store's test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if ! python3 -m venv .venv; then  # Debian/Ubuntu ship the venv module as python3-venv
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv --clear .venv
      else
        echo "error: python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)" >&2
        exit 1
      fi
    fi
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium missing and cannot be installed here; the browser test will skip"
  fi
fi

# The replicas test (tests/test_deploy.py) runs Debian's nginx in front of two app replicas, with
# its own prefix and configuration on free loopback ports; without nginx that test skips.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # (on a machine with systemd this also starts Debian's own nginx on port 80; unused)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  else
    echo "note: nginx missing and cannot be installed here; the replicas test will skip"
  fi
fi

# The PACS tests (tests/test_pacs.py) run a real Orthanc with its DICOMweb plugin and check the
# result objects with dciodvfy (dicom3tools); without them those tests skip and say why.
pacs_packages=()
{ command -v Orthanc || [ -x /usr/sbin/Orthanc ]; } >/dev/null || pacs_packages+=(orthanc)
dpkg -s orthanc-dicomweb >/dev/null 2>&1 || pacs_packages+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null || pacs_packages+=(dicom3tools)
if [ ${#pacs_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # (on a machine with systemd this also starts Debian's own Orthanc service on ports 8042/4242;
    # the tests do not use it, they start their own on free loopback ports)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pacs_packages[@]}" >/dev/null
  else
    echo "note: ${pacs_packages[*]} missing and cannot be installed here; the PACS tests will skip"
  fi
fi

# The audit store's PostgreSQL test (tests/test_audit.py) runs Debian's PostgreSQL, started by
# the test itself as a user other than root on a free loopback port; without it that test skips.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # (on a machine with systemd this also starts Debian's own cluster on port 5432; unused)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: postgresql missing and cannot be installed here; the PostgreSQL audit test will skip"
  fi
fi

ruff check .
lint-imports   # the layers in pyproject.toml (README, "Layout")
python -m pytest -ra "$@"
