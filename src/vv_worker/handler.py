"""RunPod glue: load once at cold start, then validate -> synthesize -> output or ``{"error": ...}``.

python -m vv_worker.handler                       # the serverless worker
python -m vv_worker.handler --test_input '{"input": {"text": "Hello"}}'
python -m vv_worker.handler --rp_serve_api --rp_api_port 8000
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .audio import AudioError
from .config import ConfigError, load_settings
from .engine.base import EngineError, ProgressCallback
from .fitness import FitnessError, check_gpu, register_fitness_checks
from .joblog import JobEvents, install_json_handler
from .provision import ProvisionError
from .schema import RequestError
from .service import SynthesisService
from .voices import VoiceError

log = logging.getLogger("vv_worker")

PROGRESS_INTERVAL_S = 1.0
_service: SynthesisService | None = None


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


def handle_job(job: dict, service: SynthesisService) -> dict[str, Any]:
    """Run one job; every failure becomes ``{"error": message}`` and the worker carries on."""
    job_input = job.get("input") if isinstance(job, dict) else None
    try:
        return service.handle(job_input, on_progress=_progress_reporter(job))
    except Exception as error:  # the worker must survive any single job
        return error_output(error, job)


def stream_job(job: dict, service: SynthesisService) -> Iterator[dict[str, Any]]:
    """A streaming endpoint's job: chunks, then a summary; a failure ends it with ``{"error": ...}``."""
    job_input = job.get("input") if isinstance(job, dict) else None
    try:
        if isinstance(job_input, dict) and job_input.get("action") == "list_voices":
            yield service.handle(job_input)
        else:
            yield from service.stream(job_input, on_progress=_progress_reporter(job))
    except Exception as error:
        yield error_output(error, job)


def error_output(error: Exception, job: object) -> dict[str, Any]:
    """The job's output for a failure: a clean message, never a traceback."""
    if isinstance(error, (RequestError, AudioError, VoiceError, EngineError)):
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


def handler(job: dict) -> dict[str, Any]:
    """The function RunPod calls for each job: one JSON log line per job event around the work."""
    events = JobEvents.received(job)
    events.started()
    output = handle_job(job, _service) if _service is not None else {"error": "the worker is not initialised"}
    events.done(output)
    return output


def streaming_handler(job: dict) -> Iterator[dict[str, Any]]:
    """The generator RunPod calls per job when VV_STREAMING=true (/stream gets each item as it is yielded)."""
    events = JobEvents.received(job)
    events.started()
    if _service is None:
        last: dict[str, Any] = {"error": "the worker is not initialised"}
        yield last
    else:
        last = {}
        for item in stream_job(job, _service):
            last = item
            yield item
    events.done(last)


def _warm_up_audio() -> None:
    """Compile librosa's time-stretch kernels in the background so the first speed request is fast."""
    import numpy as np

    from .audio import time_stretch

    time_stretch(np.zeros(4800, dtype=np.float32) + 0.01, 1.5)


def main() -> None:
    global _service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_json_handler()
    try:
        settings = load_settings()
        check_gpu(settings)  # before loading: a 7B model must not start loading onto a CPU by mistake
        _service = SynthesisService.from_settings(settings)
    except (ConfigError, EngineError, FitnessError, ProvisionError) as error:
        print(f"vv-worker cannot start: {error}", file=sys.stderr)
        sys.exit(2)
    threading.Thread(target=_warm_up_audio, name="warm-up-audio", daemon=True).start()
    # run by the SDK at start on RunPod (not in the local modes); a failure stops the worker with the reason
    register_fitness_checks(settings, load_model=lambda: _service)

    import runpod

    if settings.streaming:  # the SDK decides once, at start, whether the handler is a generator
        runpod.serverless.start({"handler": streaming_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
