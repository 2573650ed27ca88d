"""One OpenAI speech request through the service: encoded audio chunks while generating, then usage."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .. import audio
from ..longform import CHUNK_MAX_CHARS
from ..pauses import has_tags
from ..service import SynthesisService
from .encoders import stream_encoder
from .openai import SpeechRequest


@dataclass
class Chunk:
    data: bytes  # encoded bytes in the request's response_format (may be empty while a codec buffers)
    samples: int  # samples of audio (24 kHz) that went into the encoder for this chunk


@dataclass
class Done:
    usage: dict  # OpenAI's usage: input_tokens (the input's tokens), output_tokens (audio frames generated)
    summary: dict  # the worker's stream summary (seed_used, finish_reason, warnings, metrics, ...)


def _pcm(item: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(item["audio_b64"]), dtype="<i2")


def speech_chunks(service: SynthesisService, request: SpeechRequest) -> Iterator[Chunk | Done]:
    """Chunks of ``request.response_format`` as the engine makes them, then :class:`Done`.

    At speed 1.0 every audio frame is encoded and handed on as it is generated. Another speed
    needs the whole audio (the time stretch looks ahead), so the first chunk comes after generation.
    Raises the service's errors (bad input first, before any chunk).
    """
    if len(request.input) > CHUNK_MAX_CHARS or has_tags(request.input):
        yield from _whole(service, request)
        return
    stream = service.stream(request.worker_payload())
    summary: dict = {}
    if request.speed == 1.0:
        encoder = stream_encoder(request.response_format)
        for item in stream:
            if "audio_b64" not in item:
                summary = item
                continue
            pcm = _pcm(item)
            yield Chunk(encoder.encode(pcm), pcm.size)
    else:
        parts = []
        for item in stream:
            if "audio_b64" in item:
                parts.append(_pcm(item))
            else:
                summary = item
        samples = np.concatenate(parts).astype(np.float32) / 32768 if parts else np.zeros(0, np.float32)
        encoder, pcm = _stretched(request, samples)
        yield Chunk(encoder.encode(pcm), pcm.size)
    yield Chunk(encoder.finish(), 0)
    yield Done(usage(service, request.input, summary), summary)


def _stretched(request: SpeechRequest, samples: np.ndarray):
    """An encoder for the whole audio at ``request.speed``, and that audio as 16-bit PCM."""
    stretched = audio.time_stretch(samples, request.speed)
    pcm = np.frombuffer(audio.encode_pcm16(stretched), dtype="<i2")
    return stream_encoder(request.response_format, total_samples=pcm.size), pcm


def _whole(service: SynthesisService, request: SpeechRequest) -> Iterator[Chunk | Done]:
    """A text that is more than one generation (long, or with pause tags): the worker splits it into
    chunks generated together and joins them, so the audio is sent once it is whole."""
    payload = {key: value for key, value in request.worker_payload().items() if key != "stream"}
    result = service.synthesize({**payload, "output_format": "wav", "sample_rate": audio.MODEL_SAMPLE_RATE})
    samples, _ = sf.read(io.BytesIO(base64.b64decode(result.pop("audio_b64"))), dtype="float32")
    encoder, pcm = _stretched(request, samples)
    yield Chunk(encoder.encode(pcm), pcm.size)
    yield Chunk(encoder.finish(), 0)
    yield Done(usage(service, request.input, result), result)


def usage(service: SynthesisService, text: str, summary: dict) -> dict:
    input_tokens = service.count_tokens(text)
    output_tokens = int(summary.get("metrics", {}).get("frames", 0))
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}
