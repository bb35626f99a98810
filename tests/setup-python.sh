#!/usr/bin/env bash
# Prepare the Python side of the test fixtures (idempotent, quiet on re-runs).
#   eval "$(tests/setup-python.sh)"    # sets CLOUDPACS_TEST_DATA
# Only the final `export ...` line goes to stdout; everything else to stderr.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/target/pyenv"
PY="$VENV/bin/python"
PYDICOM_VERSION=3.0.2
DWC_VERSION=0.61.2
SCRIPT="$REPO/tests/fixtures/pydicom_corpus.py"
OUT="$REPO/target/fixtures/pydicom"

if [ ! -x "$PY" ]; then
    echo "setup-python: creating venv $VENV" >&2
    python3 -m venv "$VENV" >&2
fi
# pip is slow to start, so ask the installed package metadata first.
have="$("$PY" -c 'import importlib.metadata as m; print(m.version("pydicom"))' 2>/dev/null || true)"
if [ "$have" != "$PYDICOM_VERSION" ]; then
    echo "setup-python: installing pydicom==$PYDICOM_VERSION" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "pydicom==$PYDICOM_VERSION" >&2
fi

have_dwc="$("$PY" -c 'import importlib.metadata as m; print(m.version("dicomweb-client"))' 2>/dev/null || true)"
if [ "$have_dwc" != "$DWC_VERSION" ]; then
    echo "setup-python: installing dicomweb-client==$DWC_VERSION" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "dicomweb-client==$DWC_VERSION" >&2
fi

# Regenerate the corpus unless a manifest newer than the generator exists.
if [ ! -f "$OUT/manifest.json" ] || [ "$SCRIPT" -nt "$OUT/manifest.json" ]; then
    echo "setup-python: building $OUT" >&2
    "$PY" "$SCRIPT" "$OUT" >&2
fi
echo "export CLOUDPACS_TEST_DATA=$OUT CLOUDPACS_TEST_PYTHON=$PY"
