#!/usr/bin/env bash
# Installs Label Studio 1.23 in its own virtual environment for the live end-to-end test
# (tests/e2e/test_labelstudio_live.py). Label Studio pins its own Django, numpy and
# label-studio-sdk, so it never shares prelabel's environment.
#
# Usage: tests/e2e/labelstudio/install.sh            # into ${PRELABEL_LS_VENV:-/opt/ls-venv}
# Idempotent: does nothing when the venv already has this version (about 1 GB, ~1-2 min otherwise).
set -euo pipefail

LS_VERSION="1.23.2"
VENV="${PRELABEL_LS_VENV:-/opt/ls-venv}"
PYTHON="${PYTHON:-python3}"

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null
}

if test -x "$VENV/bin/label-studio" && test "$(installed_version)" = "$LS_VERSION"; then
  echo "label-studio $LS_VERSION already in $VENV"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
# pip warns once per package about local index folders it does not find; keep real errors.
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
quiet_pip install --quiet --upgrade pip
quiet_pip install --quiet "label-studio==$LS_VERSION"
test "$(installed_version)" = "$LS_VERSION"
echo "installed label-studio $LS_VERSION in $VENV"
