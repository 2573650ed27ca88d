"""One validated request -> audio and metadata: voices, prompt, engine, audio out."""

from __future__ import annotations

import base64
import math
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import audio
from .config import ConfigError, Settings
from .engine import SAMPLES_PER_FRAME, GenerationJob
from .engine.base import Engine, GenerationResult, JobStopped, ProgressCallback
from .prompt import Script, ScriptError, parse_script
from .schema import RequestError, SpeakerVoice, SynthesisRequest, parse_request
from .voices import VoiceLibrary, fetch_url, reference_from_base64

BUCKET_VARIABLES = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")


@dataclass
class Plan:
    """A validated request with its voices resolved and its generation job built."""

    request: SynthesisRequest
    script: Script
    voices: dict[int, ResolvedVoice]
    warnings: list[str]
    job: GenerationJob
    started: float


@dataclass
class ResolvedVoice:
    samples: np.ndarray | None
    used: str | None  # library name, "reference_audio", "reference_audio_url" or None


class SynthesisService:
    """Owns the engine and the voice library for the life of the worker process."""

    def __init__(self, settings: Settings, engine: Engine, voices: VoiceLibrary):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.reference_limits = audio.ReferenceLimits(settings.reference_min_s, settings.reference_max_s)
        if settings.default_voice and settings.default_voice.lower() not in {n.lower() for n in voices.names()}:
            raise ConfigError(
                f"VV_DEFAULT_VOICE={settings.default_voice!r} is not in the voice library at "
                f"{voices.folder} (available: {', '.join(voices.names()) or 'none'})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SynthesisService:
        """Find the model (local folder, RunPod cache, volume, baked, or hub), load it, open the library."""
        from .engine import load_engine
        from .provision import resolve_model

        source = resolve_model(settings.model)
        engine = load_engine(settings, path=source.path_or_id)
        return cls(settings, engine, VoiceLibrary(settings.voices_dir))

    # --- requests ---------------------------------------------------------------------------

    def handle(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """Dispatch a job's input on its ``action``: ``synthesize`` (the default) or ``list_voices``."""
        if isinstance(payload, dict) and payload.get("action") == "list_voices":
            extra = sorted(set(payload) - {"action"})
            if extra:
                raise RequestError(f"invalid input: list_voices takes no other fields, got {', '.join(extra)}")
            return self.list_voices()
        return self.synthesize(payload, on_progress)

    def list_voices(self) -> dict:
        default = self.default_voice()
        return {
            "voices": [entry.public() for entry in self.voices.available()],
            "default_voice": default,
        }

    def default_voice(self) -> str | None:
        if self.settings.default_voice:
            return self.voices.canonical(self.settings.default_voice)
        return next(iter(self.voices.names()), None)

    def frame_cap(self, text: str) -> int:
        """Most frames a text may generate, so a runaway generation stops (7.5 frames = 1 s)."""
        s = self.settings
        return min(s.max_frames, s.extra_frames + math.ceil(s.frames_per_char * len(text)))

    # --- voices -----------------------------------------------------------------------------

    def _load_source(self, source: SpeakerVoice, field: str) -> ResolvedVoice:
        if source.voice:
            return ResolvedVoice(self.voices.load(source.voice), self.voices.canonical(source.voice))
        if source.reference_audio:
            return ResolvedVoice(
                reference_from_base64(source.reference_audio, f"{field}reference_audio", self.reference_limits),
                "reference_audio",
            )
        raw = fetch_url(
            source.reference_audio_url,
            timeout_s=self.settings.url_timeout_s,
            max_bytes=self.settings.url_max_bytes,
            field=f"{field}reference_audio_url",
        )
        return ResolvedVoice(
            audio.prepare_reference(raw, f"{field}reference_audio_url", self.reference_limits), "reference_audio_url"
        )

    def resolve_voices(self, request: SynthesisRequest, script: Script) -> tuple[dict[int, ResolvedVoice], list[str]]:
        """Each prompt speaker's voice, by the documented precedence.

        1. ``speakers[N]`` for the speaker of ``Speaker N:`` lines;
        2. the top-level ``voice`` / ``reference_audio`` / ``reference_audio_url`` for the first speaker
           (the only one, for plain text); giving both for one speaker is an error;
        3. every other speaker: a distinct library voice, the default voice first, then manifest order;
           when the library has too few, that speaker has no voice prompt (and a warning says so).
        """
        numbers = script.speaker_numbers
        sources: dict[int, tuple[SpeakerVoice, str]] = {}
        for key, source in (request.speakers or {}).items():
            number = int(key)
            if number not in numbers:
                spoken = ", ".join(map(str, numbers)) if script.is_dialogue else "0 (plain text is Speaker 0)"
                raise RequestError(
                    f"invalid input: speakers.{key}: no line is spoken by Speaker {key}; speakers: {spoken}"
                )
            sources[numbers.index(number)] = (source, f"speakers.{key}.")
        given = [name for name in ("voice", "reference_audio", "reference_audio_url") if getattr(request, name)]
        if given:
            if 0 in sources:
                raise RequestError(
                    f"invalid input: two voice sources for Speaker {numbers[0]}: {given[0]} and "
                    f"speakers.{numbers[0]}; give one"
                )
            top = SpeakerVoice(**{name: getattr(request, name) for name in given})
            sources[0] = (top, "")

        resolved = {speaker: self._load_source(source, field) for speaker, (source, field) in sources.items()}
        taken = {voice.used for voice in resolved.values()}
        pool: list[str] = []
        for name in [self.default_voice(), *self.voices.names()]:
            if name and name not in taken and name not in pool:
                pool.append(name)
        warnings = []
        for speaker in range(len(numbers)):
            if speaker in resolved:
                continue
            if pool:
                name = pool.pop(0)
                resolved[speaker] = ResolvedVoice(self.voices.load(name), name)
            else:
                resolved[speaker] = ResolvedVoice(None, None)
                label = f"Speaker {numbers[speaker]}" if script.is_dialogue else "the text"
                reason = "the voice library is empty" if not self.voices.names() else "no unused library voice is left"
                warnings.append(f"{reason}: {label} was generated without a voice prompt")
        return resolved, warnings

    # --- synthesis --------------------------------------------------------------------------

    def plan(self, payload: object) -> Plan:
        """Validate ``payload`` (a job's input) and resolve everything generation needs. Raises on bad input."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.job_timeout
        request = parse_request(payload, max_text_chars=self.settings.max_text_chars)
        try:
            script = parse_script(request.text)
        except ScriptError as error:
            raise RequestError(f"invalid input: {error}") from None
        audio.check_output_format(request.output_format, request.sample_rate)
        if request.stream:
            self._check_streamable(request)
        voices, warnings = self.resolve_voices(request, script)
        should_stop = self._time_limit(deadline)
        reason = should_stop()
        if reason is not None:
            raise JobStopped(reason)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        job = GenerationJob(
            script=script.lines,
            voices={speaker: v.samples for speaker, v in voices.items() if v.samples is not None},
            seed=seed,
            cfg_scale=request.cfg_scale if request.cfg_scale is not None else self.settings.cfg_scale,
            diffusion_steps=request.diffusion_steps or self.settings.diffusion_steps,
            max_frames=self.frame_cap(request.text),
            temperature=request.voice_settings.temperature,
            should_stop=should_stop,
        )
        return Plan(request, script, voices, warnings, job, started)

    def synthesize(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """The whole audio in one response."""
        plan = self.plan(payload)
        if plan.request.stream:
            raise RequestError(
                "invalid input: stream: this endpoint does not stream; set VV_STREAMING=true on the endpoint "
                "(its outputs then become lists, see docs/API.md) or leave stream out"
            )
        result = self.engine.generate(plan.job, on_progress=on_progress)
        return self.respond(plan, result)

    def stream(self, payload: object, on_progress: ProgressCallback | None = None) -> Iterator[dict]:
        """For a streaming endpoint: chunks of PCM 16-bit 24 kHz while generating, then a summary.

        A request without ``stream: true`` yields its ordinary response as the single item.
        """
        plan = self.plan(payload)
        if not plan.request.stream:
            yield self.respond(plan, self.engine.generate(plan.job, on_progress=on_progress))
            return
        if not hasattr(self.engine, "stream"):
            raise RequestError("invalid input: stream: streaming needs VV_ENGINE=fast (or auto)")
        frames = self.engine.stream(plan.job, on_progress=on_progress)
        index, samples = 0, 0
        for chunk in frames:
            pcm = audio.encode_pcm16(chunk)
            yield {
                "chunk_index": index,
                "audio_b64": base64.b64encode(pcm).decode("ascii"),
                "encoding": "pcm_s16le",
                "sample_rate": audio.MODEL_SAMPLE_RATE,
                "samples": int(chunk.size),
                "start_seconds": samples / audio.MODEL_SAMPLE_RATE,
                "elapsed_seconds": round(time.perf_counter() - plan.started, 4),
            }
            index += 1
            samples += int(chunk.size)
        generation = time.perf_counter() - plan.started
        summary = self._metadata(plan, frames.frames, frames.finish_reason, generation)
        summary["metrics"]["first_audio_seconds"] = frames.first_audio_seconds
        yield {"done": True, "chunks": index, "duration_seconds": samples / audio.MODEL_SAMPLE_RATE, **summary}

    @staticmethod
    def _check_streamable(request: SynthesisRequest) -> None:
        """Streamed chunks are the model's raw audio; options that need the whole audio cannot apply."""
        refused = [
            name
            for name, off in (
                ("output_format", request.output_format == "wav"),
                ("sample_rate", request.sample_rate == audio.MODEL_SAMPLE_RATE),
                ("normalize", request.normalize is None),
                ("trim_silence", not request.trim_silence),
                ("voice_settings.speed", request.voice_settings.speed == 1.0),
            )
            if not off
        ]
        if refused:
            raise RequestError(
                f"invalid input: {', '.join(refused)}: not available with stream: true (chunks are PCM 16-bit "
                "24 kHz as generated); leave them at their defaults or do not stream"
            )

    def respond(self, plan: Plan, result: GenerationResult) -> dict:
        """The documented non-streaming response for a finished generation."""
        samples, rate, loudness = self.render(result.audio, plan.request)
        encoded = audio.encode(samples, rate, plan.request.output_format)
        delivery = self.deliver(encoded, plan.request.output_format)
        metadata = self._metadata(plan, result.frames, result.finish_reason, result.generation_seconds)
        if result.extra.get("first_audio_seconds") is not None:
            metadata["metrics"]["first_audio_seconds"] = round(result.extra["first_audio_seconds"], 4)
        return {
            **delivery,
            "format": plan.request.output_format,
            "mime_type": audio.mime_type(plan.request.output_format),
            "sample_rate": rate,
            "duration_seconds": samples.size / rate,
            **metadata,
            "loudness_lufs": loudness,
        }

    def _metadata(self, plan: Plan, frames: int, finish_reason: str | None, generation_seconds: float) -> dict:
        job = plan.job
        warnings = list(plan.warnings)
        if finish_reason == "frame_cap":
            warnings.append(
                f"generation stopped at the frame cap ({job.max_frames} frames, "
                f"{job.max_frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE:.1f} s) before the model "
                "ended the speech"
            )
        generated_seconds = frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE
        return {
            "seed_used": job.seed,
            "voice_used": plan.voices[0].used,
            "speakers_used": {str(n): plan.voices[i].used for i, n in enumerate(plan.script.speaker_numbers)},
            "text_length": len(plan.request.text),
            "finish_reason": finish_reason,
            "warnings": warnings,
            "metrics": {
                "generation_seconds": round(generation_seconds, 4),
                "real_time_factor": round(generation_seconds / generated_seconds, 4) if frames else None,
                "frames": frames,
                "frame_cap": job.max_frames,
                "diffusion_steps": job.diffusion_steps,
                "cfg_scale": job.cfg_scale,
                "engine": type(self.engine).__name__.removesuffix("Engine").lower(),
                "model": self.engine.model_id,
                "device": self.engine.device,
                "dtype": self.engine.dtype,
                "total_seconds": round(time.perf_counter() - plan.started, 4),
            },
        }

    def _time_limit(self, deadline: float):
        limit = self.settings.job_timeout

        def should_stop() -> str | None:
            if time.monotonic() > deadline:
                return f"the job ran longer than its time limit of {limit:g} s (VV_JOB_TIMEOUT) and was stopped"
            return None

        return should_stop

    @staticmethod
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

    def deliver(self, encoded: bytes, output_format: str) -> dict:
        """Inline base64 when small enough; otherwise uploaded to the configured bucket."""
        limit = self.settings.max_inline_bytes
        if len(encoded) <= limit:
            return {"audio_b64": base64.b64encode(encoded).decode("ascii")}
        missing = [name for name in BUCKET_VARIABLES if not os.environ.get(name)]
        if missing:
            raise RequestError(
                f"the encoded audio is {len(encoded):,} bytes, over the inline limit of {limit:,} bytes "
                "(VV_MAX_INLINE_BYTES; RunPod caps payloads at 10 MB for /run and 20 MB for /runsync, and base64 "
                "adds a third). Ask for a compressed output_format (mp3 or ogg), or configure a bucket "
                f"({', '.join(BUCKET_VARIABLES)}) so large results are uploaded; missing: {', '.join(missing)}"
            )
        from runpod.serverless.utils.rp_upload import upload_in_memory_object

        name = f"{uuid.uuid4().hex}.{output_format}"
        url = upload_in_memory_object(name, encoded, bucket_name=self.settings.bucket_name, prefix="vv-worker")
        return {"audio_url": url, "audio_bytes": len(encoded)}
