"""RunPod glue (queue mode): load once at cold start, then validate -> synthesize -> output or ``{"error": ...}``.

python -m vv_worker.handler                       # the serverless worker
python -m vv_worker.handler --test_input '{"input": {"text": "Hello"}}'
python -m vv_worker.handler --rp_serve_api --rp_api_port 8000

A job's input is the worker's own request, or RunPod's OpenAI path (``openai_route`` + ``openai_input``,
see :func:`openai_job`). On a streaming endpoint (``VV_STREAMING=true``) the handler is an async generator
that runs ahead of the SDK's posts and keeps audio chunks out of the job's final output (:func:`_tell_sdk`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .ahead import RunAhead
from .audio import AudioError
from .config import ConfigError, apply_cpu_threads, load_settings
from .engine.base import EngineError, ProgressCallback
from .fitness import FitnessError, check_gpu, register_fitness_checks
from .http.encoders import SAMPLE_RATE, SPEECH_FORMATS
from .http.openai import SpeechError, models_list, parse_speech, sse_event
from .joblog import JobEvents, install_json_handler
from .provision import ProvisionError
from .schema import RequestError
from .service import SynthesisService
from .voices import VoiceError

log = logging.getLogger("vv_worker")

PROGRESS_INTERVAL_S = 1.0
STREAM_CHUNK_SECONDS = 1.0  # streamed items after the first carry about this much audio each
RUN_AHEAD_ITEMS = 32  # generation may run this many streamed items ahead of the SDK's posts
OPENAI_ROUTES = ("/v1/audio/speech", "/v1/audio/voices", "/v1/models")
_service: SynthesisService | None = None
_sdk_config: dict[str, Any] = {}  # the dict given to runpod.serverless.start (the SDK keeps and reads it)


def _progress_reporter(job: dict) -> ProgressCallback | None:
    """Send RunPod progress updates at most once a second; only when running on RunPod."""
    if not os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        return None
    import runpod

    last = [0.0]

    def report(frames: int, cap: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            runpod.serverless.progress_update(job, {"frames": frames, "frame_cap": cap})

    return report


def _job_input(job: object) -> object:
    return job.get("input") if isinstance(job, dict) else None


def _is_openai(job_input: object) -> bool:
    return isinstance(job_input, dict) and ("openai_route" in job_input or "openai_input" in job_input)


def handle_job(job: dict, service: SynthesisService) -> dict[str, Any]:
    """Run one job; every failure becomes ``{"error": message}`` and the worker carries on."""
    job_input = _job_input(job)
    try:
        if _is_openai(job_input):
            return next(openai_job(job_input, service, streaming=False))
        return service.handle(job_input, on_progress=_progress_reporter(job))
    except Exception as error:  # the worker must survive any single job
        return error_output(error, job)


def stream_job(job: dict, service: SynthesisService) -> Iterator[Any]:
    """A streaming endpoint's job: chunks (the first at once, then about a second each), then a summary.

    A failure ends it with ``{"error": ...}`` (plus ``refresh_worker`` after a device fault).
    """
    job_input = _job_input(job)
    try:
        if _is_openai(job_input):
            yield from openai_job(job_input, service, streaming=True)
        elif isinstance(job_input, dict) and job_input.get("action") == "list_voices":
            yield service.handle(job_input)
        else:
            yield from group_chunks(service.stream(job_input, on_progress=_progress_reporter(job)))
    except Exception as error:
        yield error_output(error, job)


def group_chunks(items: Iterator[dict], seconds: float = STREAM_CHUNK_SECONDS) -> Iterator[dict]:
    """Join the service's per-frame chunks: the first alone (lowest latency), then ``seconds`` of audio each.

    Other items (the summary) pass through; the summary's ``chunks`` counts the joined chunks.
    """
    pending: list[dict] = []
    index = 0

    def joined() -> dict:
        pcm = b"".join(base64.b64decode(chunk["audio_b64"]) for chunk in pending)
        first, last = pending[0], pending[-1]
        return {
            **first,
            "chunk_index": index,
            "audio_b64": base64.b64encode(pcm).decode("ascii"),
            "samples": sum(chunk["samples"] for chunk in pending),
            "elapsed_seconds": last["elapsed_seconds"],
        }

    for item in items:
        if "chunk_index" not in item:
            if pending:
                yield joined()
                index, pending = index + 1, []
            yield {**item, "chunks": index} if item.get("done") else item
            continue
        pending.append(item)
        if index == 0 or sum(chunk["samples"] for chunk in pending) >= seconds * item["sample_rate"]:
            yield joined()
            index, pending = index + 1, []


def openai_job(job_input: dict, service: SynthesisService, *, streaming: bool) -> Iterator[Any]:
    """RunPod's OpenAI path for queue endpoints: ``{"openai_route": "/v1/...", "openai_input": {...}}``.

    ``/v1/audio/speech`` takes the HTTP server's request (docs/API.md). ``stream_format: "sse"`` (streaming
    endpoints only) yields OpenAI's server-sent events as text, about a second of audio each; ``"audio"``
    yields one object with the whole file as ``audio_b64`` (RunPod's outputs are JSON, not raw bytes).
    ``/v1/models`` and ``/v1/audio/voices`` yield the HTTP server's answers.
    """
    from .http.speech import Chunk, speech_chunks

    extra = sorted(set(job_input) - {"openai_route", "openai_input"})
    if extra:
        raise RequestError(f"invalid input: with openai_route, no other fields are allowed, got {', '.join(extra)}")
    route = job_input.get("openai_route")
    if route == "/v1/models":
        yield models_list(service.engine.model_id, int(time.time()))
        return
    if route == "/v1/audio/voices":
        yield service.list_voices()
        return
    if route != "/v1/audio/speech":
        raise RequestError(
            f"invalid input: openai_route: {route!r} is not served here; routes: {', '.join(OPENAI_ROUTES)}"
        )
    request = parse_speech(job_input.get("openai_input"), service.engine.model_id)
    if request.stream_format == "sse" and not streaming:
        raise RequestError(
            "invalid input: stream_format: sse needs a streaming endpoint; set VV_STREAMING=true on the endpoint "
            "or ask for stream_format audio"
        )
    pending, pending_samples, sent = bytearray(), 0, 0
    whole = bytearray()
    limit = service.settings.max_inline_bytes
    for item in speech_chunks(service, request):
        if not isinstance(item, Chunk):
            if request.stream_format == "sse":
                if pending:
                    yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(pending).decode("ascii")})
                yield sse_event({"type": "speech.audio.done", "usage": item.usage})
            else:
                yield {
                    "audio_b64": base64.b64encode(whole).decode("ascii"),
                    "format": request.response_format,
                    "mime_type": SPEECH_FORMATS[request.response_format].mime_type,
                    "usage": item.usage,
                }
            return
        if request.stream_format == "sse":
            pending += item.data
            pending_samples += item.samples
            if pending and (sent == 0 or pending_samples >= STREAM_CHUNK_SECONDS * SAMPLE_RATE):
                yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(pending).decode("ascii")})
                pending, pending_samples, sent = bytearray(), 0, sent + 1
        else:
            whole += item.data
            if len(whole) > limit:
                raise RequestError(
                    f"the {request.response_format} audio passed {limit:,} bytes (VV_MAX_INLINE_BYTES), more than a "
                    "queue job returns inline; ask for stream_format sse on a streaming endpoint, a shorter input, "
                    "or use the HTTP mode (docs/DEPLOY.md)"
                )


def error_output(error: Exception, job: object) -> dict[str, Any]:
    """The job's output for a failure: a clean message, never a traceback."""
    if isinstance(error, (RequestError, AudioError, VoiceError, EngineError, SpeechError)):
        return {"error": str(error)}
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return {"error": "the GPU ran out of memory for this request; try a shorter text"}
    log.error("job %s failed", job.get("id") if isinstance(job, dict) else None, exc_info=error)
    output: dict[str, Any] = {"error": f"internal error during synthesis ({type(error).__name__}): {error}"}
    if device_may_be_corrupted(error):
        # a CUDA context that has seen a device-side fault is unusable: RunPod replaces this worker
        output["refresh_worker"] = True
        output["error"] += "; this worker is being replaced"
    return output


def device_may_be_corrupted(error: BaseException) -> bool:
    """CUDA runtime faults (illegal access, device-side assert, ECC) leave the context unusable."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    message = str(error)
    return "CUDA error" in message or "device-side assert" in message or "CUBLAS_STATUS" in message


async def handler(job: dict) -> dict[str, Any]:
    """The function RunPod calls for each job: one JSON log line per job event around the work.

    The work runs in a thread, so the SDK's event loop takes the next jobs meanwhile (up to
    :func:`concurrent_jobs`) and the fast engine steps them together.
    """
    events = JobEvents.received(job)
    events.started()
    if _service is None:
        output: dict[str, Any] = {"error": "the worker is not initialised"}
    else:
        output = await asyncio.to_thread(handle_job, job, _service)
    events.done(output)
    return output


def concurrent_jobs(current: int = 1) -> int:
    """RunPod's ``concurrency_modifier``: jobs this worker takes at once, the fast engine's batch size
    (``VV_MAX_BATCH``); 1 for engines that run one request at a time."""
    return getattr(_service.engine, "max_batch", 1) if _service is not None else 1


async def streaming_handler(job: dict) -> AsyncIterator[Any]:
    """The generator RunPod calls per job when VV_STREAMING=true (/stream gets each item as it is yielded).

    Generation runs in its own thread, up to RUN_AHEAD_ITEMS items ahead of the SDK's posts. Before each
    item the SDK's settings for it are set (see :func:`_tell_sdk`).
    """
    events = JobEvents.received(job)
    events.started()
    last: Any = {"error": "the worker is not initialised"}
    if _service is None:
        yield last
    else:
        service = _service
        async for item in RunAhead(lambda: stream_job(job, service), RUN_AHEAD_ITEMS).aiter():
            last = item
            _tell_sdk(item)
            yield item
    events.done(last)


def _tell_sdk(item: object) -> None:
    """Set what the runpod SDK reads from its start config for the item about to be yielded.

    The SDK's per-job loop (``rp_job.handle_job``) reads ``return_aggregate_stream`` for each item, right
    after the generator yields it and before any other code runs, and ``refresh_worker`` after the job:

    - only items without audio join the final output (/runsync, /status): the summary, or the whole
      response of a request that did not stream, so the final output stays far below RunPod's caps;
      chunks and SSE text still go to /stream as they come;
    - a ``{"error": ..., "refresh_worker": true}`` item (a device fault) makes the SDK stop this worker after
      the job. (The SDK itself ends a job FAILED on an ``{"error": ...}`` item, with the error as its message.)
    """
    audio = isinstance(item, str) or (isinstance(item, dict) and "chunk_index" in item)
    _sdk_config["return_aggregate_stream"] = not audio
    if isinstance(item, dict) and item.get("error") and item.get("refresh_worker"):
        _sdk_config["refresh_worker"] = True


def quiet_sdk_logs() -> None:
    """At DEBUG (its default) the runpod SDK logs every job output, audio included: keep it at INFO or above."""
    from runpod.serverless.modules.rp_logger import LOG_LEVELS, RunPodLogger

    logger = RunPodLogger()
    if logger.level != "NOTSET" and LOG_LEVELS.index(logger.level) < LOG_LEVELS.index("INFO"):
        if os.environ.get("RUNPOD_LOG_LEVEL") or os.environ.get("RUNPOD_DEBUG_LEVEL"):
            log.warning("RUNPOD_LOG_LEVEL=%s would log job outputs (audio); using INFO", logger.level)
        logger.set_level("INFO")


def _warm_up_audio() -> None:
    """Compile librosa's time-stretch kernels in the background so the first speed request is fast."""
    import numpy as np

    from .audio import time_stretch

    time_stretch(np.zeros(4800, dtype=np.float32) + 0.01, 1.5)


def main() -> None:
    global _service
    if {"-h", "--help"} & set(sys.argv[1:]):  # before anything loads: the runpod SDK parses the rest at start
        import runpod.serverless

        print(__doc__.strip() + "\n\nSettings come from VV_* environment variables (see README.md).\n")
        print(runpod.serverless.parser.format_help())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_json_handler()
    try:
        settings = load_settings()
        check_gpu(settings)  # before loading: a 7B model must not start loading onto a CPU by mistake
        apply_cpu_threads(settings)
        _service = SynthesisService.from_settings(settings)
    except (ConfigError, EngineError, FitnessError, ProvisionError) as error:
        print(f"vv-worker cannot start: {error}", file=sys.stderr)
        sys.exit(2)
    threading.Thread(target=_warm_up_audio, name="warm-up-audio", daemon=True).start()
    # run by the SDK at start on RunPod (not in the local modes); a failure stops the worker with the reason
    register_fitness_checks(settings, load_model=lambda: _service)

    import runpod

    quiet_sdk_logs()
    # the SDK decides once, at start, whether the handler is a generator
    _sdk_config["handler"] = streaming_handler if settings.streaming else handler
    _sdk_config["concurrency_modifier"] = concurrent_jobs
    runpod.serverless.start(_sdk_config)


if __name__ == "__main__":
    main()
