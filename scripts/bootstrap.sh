#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install fatlib with
# its pinned dependencies. Safe to run repeatedly: an up-to-date venv is reused as is.
#   scripts/bootstrap.sh           python packages only
#   scripts/bootstrap.sh --browser also Debian's chromium (for the browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FATLIB_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.fatlib-installed"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV"
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[bootstrap] installing fatlib and its pinned dependencies into $VENV (torch is ~5.5 GB)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev]'
    # torchattacks pins requests~=2.25 which conflicts with sphinx; it needs nothing we lack.
    "$VENV/bin/python" -m pip install --quiet --no-deps torchattacks==3.5.1
    echo "$WANT" > "$STAMP"
else
    echo "[bootstrap] reusing $VENV"
fi

if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian chromium for the browser tests"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
