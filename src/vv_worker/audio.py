"""Audio in and out: pure functions on numpy arrays, all in memory (no temp files)."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

MODEL_SAMPLE_RATE = 24_000
MAX_CHANNELS = 8
RATE_RANGE = (8_000, 192_000)
SILENCE_DBFS = -60.0  # a reference quieter than this (RMS) holds no usable voice
TRIM_DBFS = -45.0  # leading/trailing audio below this, relative to the peak, is trimmed
PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS: limiter ceiling after loudness normalisation

# Output formats: (soundfile format, subtype, MIME type, sample rates the codec accepts or None for any)
OUTPUT_FORMATS: dict[str, tuple[str, str, str, tuple[int, ...] | None]] = {
    "wav": ("WAV", "PCM_16", "audio/wav", None),
    "flac": ("FLAC", "PCM_16", "audio/flac", None),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "ogg": ("OGG", "OPUS", "audio/ogg", (8000, 12000, 16000, 24000, 48000)),
}


class AudioError(ValueError):
    """Audio input that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class ReferenceLimits:
    """Bounds a reference voice must meet."""

    min_seconds: float = 1.0
    max_seconds: float = 60.0
    max_decode_seconds: float = 600.0  # decoding stops past this, before trimming
    max_decode_samples: int = 30_000_000  # and past this many samples (120 MB as float32), whatever the rate


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


def read_audio(
    raw: bytes, field: str, max_seconds: float = 600.0, max_samples: int = 30_000_000
) -> tuple[np.ndarray, int]:
    """Decode a file held in memory to float32 mono.

    The header is checked first (rate, channels, declared length), then the data is decoded in
    blocks with a running cap, because compressed formats can declare less than they expand to.
    """
    try:
        handle = sf.SoundFile(io.BytesIO(raw))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise AudioError(f"{field}: not a readable audio file (WAV, FLAC, OGG Vorbis/Opus or MP3 expected)") from None
    with handle:
        rate, channels = handle.samplerate, handle.channels
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise AudioError(f"{field}: sample rate {rate} Hz is outside {RATE_RANGE[0]} to {RATE_RANGE[1]} Hz")
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"{field}: {channels} channels; at most {MAX_CHANNELS} are accepted")
        cap = min(int(max_seconds * rate), max_samples)
        limit = f"at most {cap / rate:g} s at {rate} Hz is decoded"
        if handle.frames > cap:
            raise AudioError(f"{field}: declares {handle.frames / rate:.1f} s of audio; {limit}")
        blocks, total = [], 0
        try:
            for block in handle.blocks(blocksize=65536, dtype="float32", always_2d=True):
                total += block.shape[0]
                if total > cap:
                    raise AudioError(f"{field}: decodes to more than {cap / rate:g} s of audio; {limit}")
                blocks.append(block.mean(axis=1))
        except (sf.LibsndfileError, RuntimeError):
            raise AudioError(f"{field}: the audio data is corrupt or truncated") from None
    if total == 0:
        raise AudioError(f"{field}: the file holds no samples")
    mono = np.concatenate(blocks).astype(np.float32, copy=False)
    if not np.isfinite(mono).all():
        raise AudioError(f"{field}: contains NaN or infinite samples")
    return mono, int(rate)


def resample(samples: np.ndarray, rate: int, target: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling with soxr; a no-op when the rates match."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target, quality="VHQ").astype(np.float32, copy=False)


def dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def trim_silence(samples: np.ndarray, rate: int, threshold_db: float = TRIM_DBFS) -> np.ndarray:
    """Drop leading and trailing stretches quieter than ``threshold_db`` below the peak (10 ms windows)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak == 0.0:
        return samples[:0]
    window = max(1, rate // 100)
    usable = samples[: samples.size // window * window].reshape(-1, window)
    loud = np.flatnonzero(np.max(np.abs(usable), axis=1) >= peak * 10 ** (threshold_db / 20))
    if loud.size == 0:
        return samples[:0]
    start, end = loud[0] * window, min(samples.size, (loud[-1] + 1) * window)
    return samples[start:end]


def prepare_reference(raw: bytes, field: str, limits: ReferenceLimits) -> np.ndarray:
    """A decoded, checked, trimmed reference voice as float32 mono at 24 kHz."""
    samples, rate = read_audio(raw, field, limits.max_decode_seconds, limits.max_decode_samples)
    peak = float(np.max(np.abs(samples)))
    if peak > 1.0:  # float formats may exceed full scale; the level is normalised later anyway
        samples = samples / np.float32(peak)
    level = dbfs(samples)
    if level < SILENCE_DBFS:
        raise AudioError(
            f"{field}: the audio is silent or nearly so ({level:.0f} dBFS; it must be above {SILENCE_DBFS:.0f})"
        )
    samples = trim_silence(samples, rate)
    seconds = samples.size / rate
    if not limits.min_seconds <= seconds <= limits.max_seconds:
        raise AudioError(
            f"{field}: {seconds:.2f} s of voice after trimming silence; "
            f"allowed: {limits.min_seconds:g} to {limits.max_seconds:g} s"
        )
    return resample(samples, rate)


def time_stretch(samples: np.ndarray, speed: float) -> np.ndarray:
    """Change tempo by ``speed`` (2.0 = twice as fast) without changing pitch (phase vocoder)."""
    if speed == 1.0 or samples.size == 0:
        return samples
    import librosa  # imported here: slow to import and only needed for speed != 1

    return librosa.effects.time_stretch(samples, rate=speed).astype(np.float32, copy=False)


def integrated_loudness(samples: np.ndarray, rate: int) -> float | None:
    """ITU-R BS.1770 integrated loudness in LUFS (pyloudnorm); None for silence."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate, block_size=min(0.4, samples.size / rate))
    loudness = meter.integrated_loudness(samples.astype(np.float64))
    return round(float(loudness), 2) if np.isfinite(loudness) else None


def normalize_loudness(samples: np.ndarray, rate: int, target_lufs: float) -> np.ndarray:
    """Gain to ``target_lufs`` integrated loudness, then a peak limiter at -1 dBFS (which may leave it quieter)."""
    loudness = integrated_loudness(samples, rate)
    if loudness is None:
        return samples  # silence: nothing to normalise
    gained = samples * np.float32(10 ** ((target_lufs - loudness) / 20))
    return limit_peaks(gained, rate)


def limit_peaks(samples: np.ndarray, rate: int, ceiling: float = PEAK_CEILING, release_s: float = 0.05) -> np.ndarray:
    """Keep every sample within ``ceiling`` with a smooth gain envelope (instant attack, linear release)."""
    magnitude = np.abs(samples)
    if magnitude.size == 0 or magnitude.max() <= ceiling:
        return samples
    needed = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12))
    # spread each reduction over the release window on both sides so the gain does not click
    width = max(1, int(release_s * rate))
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    envelope = minimum_filter1d(needed, size=2 * width + 1, mode="nearest")
    envelope = uniform_filter1d(envelope, size=width, mode="nearest")
    out = samples * np.minimum(envelope, needed)  # smoothing never lets a peak through
    return out.astype(np.float32, copy=False)


def check_output_format(output_format: str, sample_rate: int) -> None:
    rates = OUTPUT_FORMATS[output_format][3]
    if rates is not None and sample_rate not in rates:
        allowed = ", ".join(str(r) for r in rates)
        raise AudioError(f"sample_rate: {output_format} supports {allowed} Hz, not {sample_rate}")


def encode(samples: np.ndarray, rate: int, output_format: str = "wav") -> bytes:
    """Encode mono float samples; values beyond [-1, 1] are clipped."""
    container, subtype, _, _ = OUTPUT_FORMATS[output_format]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format=container, subtype=subtype)
    return buffer.getvalue()


def encode_pcm16(samples: np.ndarray, rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """Headerless PCM 16-bit little-endian, converted exactly as in the WAV output (libsndfile)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


def mime_type(output_format: str) -> str:
    return OUTPUT_FORMATS[output_format][2]
