"""The last step of a request: generated audio -> render -> encode -> deliver -> the response and its metadata.

Every response carries the original API's fields (``success``, ``audio_b64``, ``duration_seconds``,
``seed_used``, ``reference_used``, ``text_length``, ``metrics.execution_time``, ``metrics.model``,
``metrics.sample_rate``) beside the richer ones; docs/API.md lists them all.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator

import numpy as np

from . import audio
from .config import Settings
from .engine import SAMPLES_PER_FRAME
from .engine.base import Engine, GenerationResult
from .plan import Plan, ResolvedVoice
from .schema import RequestError, SynthesisRequest


def render(samples: np.ndarray, request: SynthesisRequest) -> tuple[np.ndarray, int, float | None]:
    """speed -> trim -> resample -> loudness, in that order. Returns samples, rate, measured LUFS."""
    samples = audio.time_stretch(samples, request.voice_settings.speed)
    if request.trim_silence:
        samples = audio.trim_silence(samples, audio.MODEL_SAMPLE_RATE)
    rate = request.sample_rate
    samples = audio.resample(samples, audio.MODEL_SAMPLE_RATE, rate)
    loudness = None
    if request.normalize is not None and samples.size:
        samples = audio.normalize_loudness(samples, rate, request.normalize)
        loudness = audio.integrated_loudness(samples, rate)
    return samples, rate, loudness


def deliver(encoded: bytes, output_format: str, settings: Settings, inline_limit: int | None = None) -> dict:
    """Inline base64 when small enough (``inline_limit``, default VV_MAX_INLINE_BYTES); else uploaded to the bucket."""
    limit = settings.max_inline_bytes if inline_limit is None else inline_limit
    if len(encoded) <= limit:
        return {"audio_b64": base64.b64encode(encoded).decode("ascii")}
    credentials = settings.bucket_credentials()
    if credentials is None:
        raise RequestError(
            f"the encoded audio is {len(encoded):,} bytes, over the inline limit of {limit:,} bytes "
            "(VV_MAX_INLINE_BYTES; RunPod caps payloads at 10 MB for /run and 20 MB for /runsync, and base64 "
            "adds a third). Ask for a compressed output_format (mp3 or ogg), or configure a bucket "
            "(BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) so large results are uploaded; "
            f"missing: {', '.join(settings.missing_bucket_variables())}"
        )
    from runpod.serverless.utils.rp_upload import upload_in_memory_object

    name = f"{uuid.uuid4().hex}.{output_format}"
    url = upload_in_memory_object(
        name, encoded, bucket_creds=credentials, bucket_name=settings.bucket_name, prefix="vv-worker"
    )
    return {"audio_url": url, "audio_bytes": len(encoded)}


def respond(plan: Plan, result: GenerationResult, engine: Engine, settings: Settings) -> dict:
    """The documented non-streaming response for a finished generation."""
    samples, rate, loudness = render(result.audio, plan.request)
    encoded = audio.encode(samples, rate, plan.request.output_format)
    delivery = deliver(encoded, plan.request.output_format, settings)
    metadata = metadata_of(plan, result.frames, result.finish_reason, result.generation_seconds, engine, rate)
    first_audio = result.extra.get("first_audio_seconds")
    if first_audio is not None:
        metadata["metrics"]["first_audio_seconds"] = round(first_audio, 4)
    if result.extra.get("batch_size"):
        metadata["metrics"]["batch_size"] = result.extra["batch_size"]
    return {
        "success": True,
        **delivery,
        "format": plan.request.output_format,
        "mime_type": audio.mime_type(plan.request.output_format),
        "sample_rate": rate,
        "duration_seconds": samples.size / rate,
        **metadata,
        "loudness_lufs": loudness,
    }


def stream_items(plan: Plan, frames, engine: Engine) -> Iterator[dict]:
    """A streaming job's items: one PCM 16-bit 24 kHz chunk per generated frame, then a summary.

    ``frames`` is the engine's frame stream; once exhausted it holds ``frames``, ``finish_reason``,
    ``first_audio_seconds`` and (fast engine) ``batch_size``.
    """
    rate = audio.MODEL_SAMPLE_RATE
    index, samples = 0, 0
    for chunk in frames:
        yield {
            "chunk_index": index,
            "audio_b64": base64.b64encode(audio.encode_pcm16(chunk)).decode("ascii"),
            "encoding": "pcm_s16le",
            "sample_rate": rate,
            "samples": int(chunk.size),
            "start_seconds": samples / rate,
            "elapsed_seconds": round(time.perf_counter() - plan.started, 4),
        }
        index += 1
        samples += int(chunk.size)
    generation = time.perf_counter() - plan.started
    summary = metadata_of(plan, frames.frames, frames.finish_reason, generation, engine, rate)
    summary["metrics"]["first_audio_seconds"] = frames.first_audio_seconds
    if getattr(frames, "batch_size", 0):
        summary["metrics"]["batch_size"] = frames.batch_size
    yield {"success": True, "done": True, "chunks": index, "duration_seconds": samples / rate, **summary}


def describe_voice(voice: ResolvedVoice) -> str:
    """One speaker's voice, as a phrase."""
    if voice.used is None:
        return "no reference (generated without a voice prompt)"
    if voice.used == "reference_audio":
        return "the recording sent in reference_audio"
    if voice.used == "reference_audio_url":
        return f"the recording fetched from reference_audio_url (host {voice.url_host})"
    why = {"default": ", the default voice", "assigned": ", a free library voice"}.get(voice.how, "")
    return f"library voice '{voice.used}'{why}"


def reference_used(plan: Plan) -> str:
    """The original API's ``reference_used``: a sentence saying which reference each speaker was given."""
    if not plan.script.is_dialogue:
        if plan.voices[0].used is None:
            return "No reference voice was used: the speech was generated without a voice prompt."
        return f"Used {describe_voice(plan.voices[0])}."
    parts = [f"Speaker {n}: {describe_voice(plan.voices[i])}" for i, n in enumerate(plan.script.speaker_numbers)]
    return "Used " + "; ".join(parts) + "."


def engine_name(engine: Engine) -> str:
    return type(engine).__name__.removesuffix("Engine").lower()


def metadata_of(
    plan: Plan, frames: int, finish_reason: str | None, generation_seconds: float, engine: Engine, sample_rate: int
) -> dict:
    """Everything a response says about how it was made (shared by whole and streamed responses)."""
    job = plan.job
    warnings = list(plan.warnings)
    if finish_reason == "frame_cap":
        warnings.append(
            f"generation stopped at the frame cap ({job.max_frames} frames, "
            f"{job.max_frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE:.1f} s) before the model "
            "ended the speech"
        )
    generated_seconds = frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE
    total = round(time.perf_counter() - plan.started, 4)
    return {
        "seed_used": job.seed,
        "voice_used": plan.voices[0].used,
        "speakers_used": {str(n): plan.voices[i].used for i, n in enumerate(plan.script.speaker_numbers)},
        "reference_used": reference_used(plan),
        "text_length": len(plan.request.text),
        "finish_reason": finish_reason,
        "warnings": warnings,
        "metrics": {
            "generation_seconds": round(generation_seconds, 4),
            "real_time_factor": round(generation_seconds / generated_seconds, 4) if frames else None,
            "frames": frames,
            "frame_cap": job.max_frames,
            "text_tokens": plan.text_tokens,
            "diffusion_steps": job.diffusion_steps,
            "cfg_scale": job.cfg_scale,
            "engine": engine_name(engine),
            "model": engine.model_id,
            "device": engine.device,
            "dtype": engine.dtype,
            "sample_rate": sample_rate,
            "total_seconds": total,
            "execution_time": total,
        },
    }
