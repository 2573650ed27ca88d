"""Audio encoders that emit bytes chunk by chunk, for responses that stream while generating.

One table, :data:`SPEECH_FORMATS`, declares the HTTP server's formats (OpenAI's names). Every
format is written so a player accepts it before its length is known:

- ``pcm``: headerless PCM 16-bit little-endian, mono, 24 kHz (OpenAI's ``pcm``);
- ``wav``: PCM 16-bit; the header declares the largest sizes (0xFFFFFFFF) when the total is not known
  up front, which players and decoders (ffmpeg, libsndfile, Python's ``wave``) read as "until the end";
- ``mp3``, ``opus`` (Ogg), ``aac`` (ADTS) and ``flac``: encoded with FFmpeg's encoders through PyAV into a
  write-only sink, so the muxers never seek back (FLAC's STREAMINFO then says "length unknown", which the
  format allows).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class SpeechFormat:
    mime_type: str
    container: str | None = None  # FFmpeg muxer; None: written here (pcm, wav)
    codec: str | None = None  # FFmpeg encoder
    options: tuple[tuple[str, str], ...] = ()  # muxer options


SPEECH_FORMATS: dict[str, SpeechFormat] = {
    "mp3": SpeechFormat("audio/mpeg", "mp3", "libmp3lame"),
    # pages of at most 20 ms, so each chunk's audio leaves at once instead of once a second
    "opus": SpeechFormat("audio/ogg", "ogg", "libopus", (("page_duration", "20000"),)),
    "aac": SpeechFormat("audio/aac", "adts", "aac"),
    "flac": SpeechFormat("audio/flac", "flac", "flac"),
    "wav": SpeechFormat("audio/wav"),
    "pcm": SpeechFormat("audio/pcm"),
}


class StreamEncoder(Protocol):
    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready to send after ``samples`` (int16 mono); may be empty while the codec buffers."""

    def finish(self) -> bytes:
        """The remaining bytes; the encoder is unusable afterwards."""


class PcmEncoder:
    def encode(self, samples: np.ndarray) -> bytes:
        return samples.astype("<i2", copy=False).tobytes()

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """PCM 16-bit WAV; exact sizes when ``total_samples`` is known, else the largest the header can hold."""

    def __init__(self, rate: int = SAMPLE_RATE, total_samples: int | None = None):
        data = 0xFFFFFFFF if total_samples is None else 2 * total_samples
        riff = 0xFFFFFFFF if total_samples is None else 36 + data
        fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
        self._header = b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data)

    def encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + super().encode(samples)

    def finish(self) -> bytes:
        header, self._header = self._header, b""
        return header  # a WAV of no samples still has its header


class _Sink:
    """A write-only file for FFmpeg: no ``seek``, so muxers write strictly forward."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class FFmpegEncoder:
    """One of the FFmpeg codecs of :data:`SPEECH_FORMATS`, fed int16 mono frames of any length."""

    def __init__(self, spec: SpeechFormat, rate: int = SAMPLE_RATE):
        import av

        self._av = av
        self._rate = rate
        self._pts = 0
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, options=dict(spec.options))
        self._stream = self._container.add_stream(spec.codec, rate=rate, layout="mono")

    def _mux(self, frame) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def encode(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:
            return b""
        frame = self._av.AudioFrame.from_ndarray(samples.astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += samples.size
        return self._mux(frame)

    def finish(self) -> bytes:
        tail = self._mux(None)
        self._container.close()
        return tail + self._sink.take()


def stream_encoder(name: str, total_samples: int | None = None) -> StreamEncoder:
    """A fresh encoder for format ``name`` (a key of :data:`SPEECH_FORMATS`)."""
    if name == "pcm":
        return PcmEncoder()
    if name == "wav":
        return WavEncoder(total_samples=total_samples)
    return FFmpegEncoder(SPEECH_FORMATS[name])
