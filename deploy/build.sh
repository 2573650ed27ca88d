#!/usr/bin/env bash
# Build the worker image for RunPod (linux/amd64) and push it.
#
#   deploy/build.sh IMAGE[:TAG]                       # model found at start (RunPod cache, volume or hub)
#   BAKE_MODEL=1 deploy/build.sh IMAGE[:TAG]          # model baked into the image
#   HF_TOKEN=hf_... BAKE_MODEL=1 deploy/build.sh ...  # gated/private repo: the token goes in as a BuildKit
#                                                     # secret (--secret id=hf_token,env=HF_TOKEN), never a layer
# Other settings (environment): MODEL_REPO, MODEL_REVISION, FLASH_ATTN_WHEEL, BASE_IMAGE, PLATFORM,
# PUSH=0 (build into the local docker instead of pushing), DRY_RUN=1 (print the command only).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${1:-}"
if [ -z "$IMAGE" ]; then
  echo "usage: deploy/build.sh IMAGE[:TAG]   (for example docker.io/you/vv-worker:0.1.0)" >&2
  exit 2
fi

python deploy/check_dockerfile.py Dockerfile

args=(buildx build --platform "${PLATFORM:-linux/amd64}" -t "$IMAGE"
      --build-arg "BAKE_MODEL=${BAKE_MODEL:-0}"
      --build-arg "MODEL_REPO=${MODEL_REPO:-vibevoice/VibeVoice-7B-hf}"
      --build-arg "MODEL_REVISION=${MODEL_REVISION:-main}")
if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
  args+=(--build-arg "FLASH_ATTN_WHEEL=$FLASH_ATTN_WHEEL")
fi
if [ -n "${BASE_IMAGE:-}" ]; then
  args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
if [ -n "${HF_TOKEN:-}" ]; then
  args+=(--secret "id=hf_token,env=HF_TOKEN")  # the value stays in the environment, never on the command line
fi
if [ "${PUSH:-1}" = "1" ]; then
  args+=(--push)
else
  args+=(--load)
fi
args+=(.)

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf 'would run: docker'; printf ' %q' "${args[@]}"; printf '\n'
  exit 0
fi
docker "${args[@]}"
echo "built ${IMAGE}$([ "${PUSH:-1}" = "1" ] && echo ' and pushed it')"
