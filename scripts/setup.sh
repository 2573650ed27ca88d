#!/usr/bin/env bash
# Install vv-worker with its dev tools. On a machine without CUDA, the CPU build of torch is
# installed first (pinned, so pip does not pull several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch>=2.4"
  else
    "$PYTHON" -m pip install --quiet torch==2.13.0
  fi
fi
"$PYTHON" -m pip install --quiet -e ".[dev]"
"$PYTHON" -c "import vv_worker, torch, transformers; print('vv-worker', vv_worker.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
