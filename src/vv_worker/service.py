"""One validated request -> audio and metadata: voice, prompt, engine, audio out."""

from __future__ import annotations

import base64
import math
import secrets
import time
from dataclasses import dataclass

import numpy as np

from . import audio
from .config import ConfigError, Settings
from .engine import SAMPLES_PER_FRAME, GenerationJob
from .engine.base import Engine, ProgressCallback
from .prompt import single_speaker_script
from .schema import SynthesisRequest, parse_request
from .voices import VoiceLibrary, fetch_url, reference_from_base64, reference_from_bytes


@dataclass
class ResolvedVoice:
    samples: np.ndarray | None
    used: str | None  # library name, "reference_audio", "reference_audio_url" or None
    warning: str | None = None


class SynthesisService:
    """Owns the engine and the voice library for the life of the worker process."""

    def __init__(self, settings: Settings, engine: Engine, voices: VoiceLibrary):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        if settings.default_voice and settings.default_voice.lower() not in {name.lower() for name in voices.names()}:
            raise ConfigError(
                f"VV_DEFAULT_VOICE={settings.default_voice!r} is not in the voice library at "
                f"{voices.folder} (available: {', '.join(voices.names()) or 'none'})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SynthesisService:
        from .engine.reference import ReferenceEngine

        return cls(settings, ReferenceEngine.load(settings), VoiceLibrary(settings.voices_dir))

    def frame_cap(self, text: str) -> int:
        """Most frames a text may generate, so a runaway generation stops (7.5 frames = 1 s)."""
        s = self.settings
        return min(s.max_frames, s.extra_frames + math.ceil(s.frames_per_char * len(text)))

    def resolve_voice(self, request: SynthesisRequest) -> ResolvedVoice:
        if request.voice:
            return ResolvedVoice(self.voices.load(request.voice), self.voices.entries[request.voice.lower()].name)
        if request.reference_audio:
            return ResolvedVoice(reference_from_base64(request.reference_audio), "reference_audio")
        if request.reference_audio_url:
            raw = fetch_url(
                request.reference_audio_url,
                timeout_s=self.settings.url_timeout_s,
                max_bytes=self.settings.url_max_bytes,
            )
            return ResolvedVoice(reference_from_bytes(raw, "reference_audio_url"), "reference_audio_url")
        default = self.settings.default_voice or next(iter(self.voices.names()), None)
        if default is None:
            return ResolvedVoice(None, None, "the voice library is empty: generated without a voice prompt")
        return ResolvedVoice(self.voices.load(default), self.voices.entries[default.lower()].name)

    def synthesize(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """Validate ``payload`` (a job's input) and synthesize it. Raises on bad input."""
        started = time.perf_counter()
        request = parse_request(payload, max_text_chars=self.settings.max_text_chars)
        voice = self.resolve_voice(request)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        job = GenerationJob(
            script=single_speaker_script(request.text),
            voices={0: voice.samples} if voice.samples is not None else {},
            seed=seed,
            cfg_scale=request.cfg_scale if request.cfg_scale is not None else self.settings.cfg_scale,
            diffusion_steps=request.diffusion_steps or self.settings.diffusion_steps,
            max_frames=self.frame_cap(request.text),
            temperature=request.voice_settings.temperature,
        )
        result = self.engine.generate(job, on_progress=on_progress)

        samples = audio.time_stretch(result.audio, request.voice_settings.speed)
        wav = audio.encode_wav(samples, audio.MODEL_SAMPLE_RATE)
        duration = samples.size / audio.MODEL_SAMPLE_RATE
        generated_seconds = result.frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE
        warnings = [w for w in (voice.warning,) if w]
        if result.finish_reason == "frame_cap":
            warnings.append(
                f"generation stopped at the frame cap ({job.max_frames} frames, "
                f"{job.max_frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE:.1f} s) before the model "
                "ended the speech"
            )
        return {
            "audio_b64": base64.b64encode(wav).decode("ascii"),
            "format": "wav",
            "mime_type": "audio/wav",
            "sample_rate": audio.MODEL_SAMPLE_RATE,
            "duration_seconds": duration,
            "seed_used": seed,
            "voice_used": voice.used,
            "text_length": len(request.text),
            "finish_reason": result.finish_reason,
            "warnings": warnings,
            "metrics": {
                "generation_seconds": round(result.generation_seconds, 4),
                "real_time_factor": round(result.generation_seconds / generated_seconds, 4),
                "frames": result.frames,
                "frame_cap": job.max_frames,
                "diffusion_steps": job.diffusion_steps,
                "cfg_scale": job.cfg_scale,
                "model": self.engine.model_id,
                "device": self.engine.device,
                "dtype": self.engine.dtype,
                "total_seconds": round(time.perf_counter() - started, 4),
            },
        }
