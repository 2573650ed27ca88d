#!/usr/bin/env bash
# Install vv-worker (editable) with its dev tools.
#
# torch: an installed torch is kept. Otherwise torch==2.13.0 (TORCH_SPEC) is installed:
#   TORCH_INDEX_URL set   from that index, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
#                         build (about 200 MB), or https://download.pytorch.org/whl/cu128 for CUDA 12.8
#   TORCH_INDEX_URL unset whatever pip's configured sources give. From PyPI on Linux x86_64 that is the
#                         CUDA build, which pulls several GB of nvidia-* packages; on macOS and Windows it
#                         is the CPU build. A local wheel on pip's find-links path is used when there is one.
# The last line says which torch ended up installed: its version and CUDA build, or CPU only.
# Library voices are not fetched here: `python -m vv_worker.local --voice NAME` downloads them on first
# use, and `python scripts/fetch_voices.py` fetches them all.
# VV_SETUP_DRY_RUN=1 prints the install commands instead of running them (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"

run() {
  if [ "${VV_SETUP_DRY_RUN:-0}" = "1" ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "setup: keeping the installed torch"
elif [ -n "$TORCH_INDEX_URL" ]; then
  echo "setup: installing $TORCH_SPEC from $TORCH_INDEX_URL"
  run "$PYTHON" -m pip install --quiet --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
else
  echo "setup: installing $TORCH_SPEC from pip's configured sources (from PyPI on Linux: the CUDA build, several GB;"
  echo "       for the CPU-only build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh)"
  run "$PYTHON" -m pip install --quiet "$TORCH_SPEC"
fi
run "$PYTHON" -m pip install --quiet -e ".[dev]"
run "$PYTHON" -c "import vv_worker, torch, transformers; build = f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU only'; print('vv-worker', vv_worker.__version__, '| torch', torch.__version__, f'({build})', '| transformers', transformers.__version__)"
