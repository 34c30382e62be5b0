#!/usr/bin/env bash
# Create .venv/ at the repository root and install amc into it (idempotent).
# torch comes first and pinned, so pip does not pick a build for us: where a local
# wheel of that release exists (a find-links folder in pip's config) it is taken from there,
# elsewhere pip fetches the build PyPI serves for this platform. Override with AMC_TORCH.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${AMC_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
