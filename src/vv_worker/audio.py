"""Audio in and out: pure functions on numpy arrays, all in memory (no temp files)."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
import soundfile as sf
import soxr

MODEL_SAMPLE_RATE = 24_000
MAX_REFERENCE_CHANNELS = 8
REFERENCE_RATE_RANGE = (8_000, 192_000)


class AudioError(ValueError):
    """Audio input that cannot be used; the message says why."""


_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_base64(data: str, field: str) -> bytes:
    """Decode base64 (optionally a ``data:audio/...;base64,`` URI) strictly."""
    payload = _DATA_URI.sub("", data.strip(), count=1)
    payload = "".join(payload.split())
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise AudioError(f"{field}: not valid base64") from None
    if not raw:
        raise AudioError(f"{field}: decodes to zero bytes")
    return raw


def read_audio(raw: bytes, field: str, max_seconds: float = 600.0) -> tuple[np.ndarray, int]:
    """Decode a file held in memory to float32 mono, checking the header before decoding."""
    try:
        info = sf.info(io.BytesIO(raw))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise AudioError(f"{field}: not a readable audio file (WAV, FLAC or OGG expected)") from None
    if not REFERENCE_RATE_RANGE[0] <= info.samplerate <= REFERENCE_RATE_RANGE[1]:
        raise AudioError(
            f"{field}: sample rate {info.samplerate} Hz is outside {REFERENCE_RATE_RANGE[0]}-"
            f"{REFERENCE_RATE_RANGE[1]} Hz"
        )
    if not 1 <= info.channels <= MAX_REFERENCE_CHANNELS:
        raise AudioError(f"{field}: {info.channels} channels; at most {MAX_REFERENCE_CHANNELS} are accepted")
    if info.frames > max_seconds * info.samplerate:
        raise AudioError(
            f"{field}: declares {info.frames / info.samplerate:.1f} s of audio; at most {max_seconds:.0f} s is decoded"
        )
    try:
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        raise AudioError(f"{field}: the audio data is corrupt or truncated") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{field}: the file holds no samples")
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{field}: contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def resample(samples: np.ndarray, rate: int, target: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling with soxr; a no-op when the rates match."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target, quality="VHQ").astype(np.float32, copy=False)


def time_stretch(samples: np.ndarray, speed: float) -> np.ndarray:
    """Change tempo by ``speed`` (2.0 = twice as fast) without changing pitch (phase vocoder)."""
    if speed == 1.0 or samples.size == 0:
        return samples
    import librosa  # imported here: slow to import and only needed for speed != 1

    return librosa.effects.time_stretch(samples, rate=speed).astype(np.float32, copy=False)


def encode_wav(samples: np.ndarray, rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """PCM 16-bit mono WAV bytes; samples beyond [-1, 1] are clipped."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
