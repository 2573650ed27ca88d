#!/usr/bin/env bash
# Install vv-worker inside the image, in two steps so that code changes do not invalidate the
# dependency layer or the baked model:
#
#   bash scripts/docker/install.sh deps      # runtime dependencies from pyproject.toml (+ flash-attn wheel)
#   bash scripts/docker/install.sh package   # the package itself, without touching dependencies
#
# torch comes from the base image (a CUDA 12 build); pip keeps it because it satisfies "torch>=2.6".
# flash-attention is installed only from a prebuilt wheel given in FLASH_ATTN_WHEEL (a URL or path
# matching the image's python, torch and CUDA); without one the worker uses sdpa. The wheel goes in with
# --no-deps (so it cannot replace torch), then its one runtime dependency, einops, and the build checks the
# imports transformers makes for flash_attention_2 (flash_attn's functions and flash_attn.bert_padding).
# VV_INSTALL_DRY_RUN=1 prints the commands instead of running them (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
STEP="${1:-}"

run() {
  if [ "${VV_INSTALL_DRY_RUN:-0}" = "1" ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

case "$STEP" in
  deps)
    run "$PYTHON" -c "import torch; print('base image: torch', torch.__version__, '| CUDA build', torch.version.cuda)"
    # the dependency list of pyproject.toml, so the list lives in one place
    mapfile -t DEPS < <("$PYTHON" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")
    if [ "${#DEPS[@]}" -eq 0 ]; then
      echo "install.sh: no dependencies found in pyproject.toml" >&2
      exit 1
    fi
    run "$PYTHON" -m pip install --no-cache-dir "${DEPS[@]}"
    # a dependency must not have swapped the base image's CUDA build of torch for a CPU one
    run "$PYTHON" -c "import sys, torch; print('after install: torch', torch.__version__, '| CUDA build', torch.version.cuda); sys.exit(torch.version.cuda is None)"
    if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
      run "$PYTHON" -m pip install --no-cache-dir --no-deps "$FLASH_ATTN_WHEEL"
      run "$PYTHON" -m pip install --no-cache-dir "einops>=0.7"
      run "$PYTHON" -c "import flash_attn; from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache; from flash_attn.bert_padding import pad_input, unpad_input; print('flash-attn', flash_attn.__version__, '(the imports transformers makes for flash_attention_2)')"
    else
      echo "install.sh: no FLASH_ATTN_WHEEL given; the worker will use sdpa attention"
    fi
    ;;
  package)
    run "$PYTHON" -m pip install --no-cache-dir --no-deps .
    run "$PYTHON" -c "import vv_worker, transformers; from transformers import VibeVoiceForConditionalGeneration; print('vv-worker', vv_worker.__version__, '| transformers', transformers.__version__)"
    ;;
  *)
    echo "usage: install.sh deps|package" >&2
    exit 2
    ;;
esac
