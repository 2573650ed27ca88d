"""Audio in and out: pure functions on numpy arrays, all in memory (no temp files)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from . import limits
from .limits import INPUT_FORMATS_TEXT, OUTPUT_FORMATS

MODEL_SAMPLE_RATE = 24_000
SILENCE_DBFS = -60.0  # a reference quieter than this (RMS) holds no usable voice
TRIM_DBFS = -45.0  # leading/trailing audio below this, relative to the peak, is trimmed
PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS: limiter ceiling after loudness normalisation
DECODE_BLOCK = 65536  # frames decoded between two checks of the caps and the job's time limit

StopCheck = Callable[[], None]  # raises when the job must stop (its time limit); called between decode blocks


class AudioError(ValueError):
    """Audio input that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class ReferenceLimits:
    """Bounds a reference voice must meet."""

    min_seconds: float = 1.0
    max_seconds: float = 60.0
    max_decode_seconds: float = limits.REFERENCE_DECODE_SECONDS
    max_decode_samples: int = limits.REFERENCE_DECODE_SAMPLES


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


def wav_data_shortfall(raw: bytes) -> int:
    """Bytes missing from a RIFF WAV's ``data`` chunk (0 when complete, or when its size is left unknown).

    libsndfile quietly shortens a WAV to what the file holds, so a cut file is found here, from the header.
    """
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= len(raw):
        chunk, size = raw[offset : offset + 4], struct.unpack_from("<I", raw, offset + 4)[0]
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unknown
                return 0
            return max(0, size - (len(raw) - offset - 8))
        offset += 8 + size + (size & 1)
    return 0


def read_audio(
    raw: bytes,
    field: str,
    max_seconds: float = limits.REFERENCE_DECODE_SECONDS,
    max_samples: int = limits.REFERENCE_DECODE_SAMPLES,
    check_stop: StopCheck | None = None,
) -> tuple[np.ndarray, int]:
    """Decode a file held in memory to float32 mono.

    The header is checked first (format, rate, channels, declared length), then the data is decoded in
    blocks with a running cap, because compressed formats can declare less than they expand to.
    ``check_stop`` is called between blocks, so decoding counts against the job's time limit.
    """
    try:
        handle = sf.SoundFile(io.BytesIO(raw))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise AudioError(f"{field}: not a readable audio file (accepted: {INPUT_FORMATS_TEXT})") from None
    with handle:
        accepted = limits.input_format(handle.format, handle.subtype)
        if accepted is None:
            raise AudioError(
                f"{field}: {handle.format} audio ({handle.subtype}) is not accepted; accepted: {INPUT_FORMATS_TEXT}"
            )
        rate, channels = handle.samplerate, handle.channels
        low, high = limits.REFERENCE_FILE_RATE.low, limits.REFERENCE_FILE_RATE.high
        if rate not in limits.REFERENCE_FILE_RATE:
            raise AudioError(f"{field}: sample rate {rate} Hz is outside {low} to {high} Hz")
        if not 1 <= channels <= limits.REFERENCE_FILE_CHANNELS:
            raise AudioError(f"{field}: {channels} channels; at most {limits.REFERENCE_FILE_CHANNELS} are accepted")
        cap = min(int(max_seconds * rate), max_samples)
        limit = f"at most {cap / rate:g} s at {rate} Hz is decoded"
        if handle.frames > cap:
            raise AudioError(f"{field}: declares {handle.frames / rate:.1f} s of audio; {limit}")
        if accepted.container in ("WAV", "WAVEX") and (missing := wav_data_shortfall(raw)):
            raise AudioError(
                f"{field}: the file is truncated: its header declares {missing:,} more bytes of audio than it holds"
            )
        blocks, total = [], 0
        reader = handle.blocks(blocksize=DECODE_BLOCK, dtype="float32", always_2d=True)
        while True:
            try:
                block = next(reader, None)
            except (sf.LibsndfileError, RuntimeError):
                raise AudioError(f"{field}: the audio data is corrupt or truncated") from None
            if block is None:
                break
            total += block.shape[0]
            if total > cap:
                raise AudioError(f"{field}: decodes to more than {cap / rate:g} s of audio; {limit}")
            blocks.append(block.mean(axis=1))
            if check_stop is not None:
                check_stop()
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


def prepare_reference(
    raw: bytes, field: str, bounds: ReferenceLimits, check_stop: StopCheck | None = None
) -> np.ndarray:
    """A decoded, checked, trimmed reference voice as float32 mono at 24 kHz."""
    samples, rate = read_audio(raw, field, bounds.max_decode_seconds, bounds.max_decode_samples, check_stop)
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
    if not bounds.min_seconds <= seconds <= bounds.max_seconds:
        raise AudioError(
            f"{field}: {seconds:.2f} s of voice after trimming silence; "
            f"allowed: {bounds.min_seconds:g} to {bounds.max_seconds:g} s"
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
    rates = OUTPUT_FORMATS[output_format].rates
    if rates is not None and sample_rate not in rates:
        allowed = ", ".join(str(r) for r in rates)
        raise AudioError(f"sample_rate: {output_format} supports {allowed} Hz, not {sample_rate}")


def encode(samples: np.ndarray, rate: int, output_format: str = "wav") -> bytes:
    """Encode mono float samples; values beyond [-1, 1] are clipped."""
    entry = OUTPUT_FORMATS[output_format]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format=entry.container, subtype=entry.subtype)
    return buffer.getvalue()


def encode_pcm16(samples: np.ndarray, rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """Headerless PCM 16-bit little-endian, converted exactly as in the WAV output (libsndfile)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


def mime_type(output_format: str) -> str:
    return OUTPUT_FORMATS[output_format].mime_type
