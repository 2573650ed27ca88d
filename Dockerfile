# syntax=docker/dockerfile:1.7
# vv-worker: VibeVoice TTS as a RunPod Serverless worker. Build with deploy/build.sh (see docs/DEPLOY.md).
# One image, two modes: VV_MODE=queue (default: the RunPod handler, /run and /runsync) or VV_MODE=http
# (the OpenAI-compatible server on $PORT, for load-balancing endpoints).
#
#   docker buildx build -t IMAGE .                                   # model loaded at start (cache/volume/hub)
#   docker buildx build --build-arg BAKE_MODEL=1 \
#       --secret id=hf_token,env=HF_TOKEN -t IMAGE .                 # model baked into /app/models
#
# The hub token is only ever a BuildKit secret mount: it is never an ARG or ENV and never in a layer.

# CUDA 12.8 runtime with a matching PyTorch build (python 3.11); override to change both together.
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# 1 = download the checkpoint into the image (bigger image, fastest cold start without RunPod's cache)
ARG BAKE_MODEL=0
ARG MODEL_REPO=vibevoice/VibeVoice-7B-hf
ARG MODEL_REVISION=main
# URL of a prebuilt flash-attn wheel matching this image's python/torch/CUDA; empty = sdpa attention
ARG FLASH_ATTN_WHEEL=

# RUNPOD_LOG_LEVEL: the SDK's default, DEBUG, would log every job output (audio included)
# VV_JOB_TIMEOUT: below RunPod's default execution timeout (600 s), so a long job ends with the worker's
# own clean error instead of being killed; raise both together (docs/DEPLOY.md)
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/worker/.cache/huggingface \
    VV_VOICES_DIR=/app/voices \
    VV_MODE=queue \
    VV_HOST=0.0.0.0 \
    VV_JOB_TIMEOUT=570 \
    RUNPOD_LOG_LEVEL=INFO

WORKDIR /app

# 1. dependencies (changes only when pyproject.toml does)
COPY pyproject.toml ./
COPY scripts/docker/install.sh ./scripts/docker/install.sh
RUN bash scripts/docker/install.sh deps

# 2. the model, when baked: outside /runpod-volume so a mounted network volume cannot hide it
COPY scripts/download_model.py ./scripts/download_model.py
COPY src/vv_worker/__init__.py src/vv_worker/checkpoint.py ./src/vv_worker/
RUN --mount=type=secret,id=hf_token,required=false \
    if [ "$BAKE_MODEL" = "1" ]; then \
        python scripts/download_model.py --repo "$MODEL_REPO" --revision "$MODEL_REVISION" \
            --out "/app/models/${MODEL_REPO##*/}" --token-file /run/secrets/hf_token \
        && rm -rf "/app/models/${MODEL_REPO##*/}/.cache"; \
    else \
        echo "BAKE_MODEL=$BAKE_MODEL: the model is not baked; the worker finds it at start (docs/DEPLOY.md)"; \
    fi

# a tiny random-weight VibeVoice (a few MB) for smoke tests such as .runpod/tests.json: VV_MODEL=/app/models/tiny
COPY scripts/make_tiny_model.py ./scripts/make_tiny_model.py
RUN python scripts/make_tiny_model.py /app/models/tiny

# 3. the voice library, checked against the manifest's sha256
COPY voices/manifest.json ./voices/manifest.json
COPY scripts/fetch_voices.py ./scripts/fetch_voices.py
RUN python scripts/fetch_voices.py --dir /app/voices --manifest /app/voices/manifest.json

# 4. the package itself (changes most often, so last)
COPY README.md ./
COPY src ./src
RUN bash scripts/docker/install.sh package

# 5. run as an unprivileged user; the baked model and voices stay read-only
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin worker
USER worker

# the HTTP mode listens here (RunPod's PORT / PORT_HEALTH override it)
EXPOSE 8000
CMD ["python", "-m", "vv_worker"]
