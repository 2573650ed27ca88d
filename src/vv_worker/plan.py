"""A job's input -> a :class:`Plan`: every request check, in the order a request meets them.

1. shape and field bounds (``schema.parse_request``), the script (``Speaker N:`` lines), output options the
   codec can take, streaming options: :func:`check_request`, which needs no model
2. the text's token count, by the checkpoint's tokenizer (``VV_MAX_TEXT_TOKENS``)
3. ``speakers`` keys against the script; one voice source per speaker
4. voices: library, base64 or URL, decoded inside the job's time limit; other speakers get library voices
5. the generation job (seed, guidance, steps, frame cap, the time limit's stop check)

Nothing here touches the model: ``count_tokens`` is the tokenizer's length function.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import audio
from .config import Settings
from .engine.base import GenerationJob, JobStopped
from .longform import CHUNK_MAX_CHARS
from .pauses import PauseError, find_pauses, has_tags
from .prompt import Script, ScriptError, parse_script
from .schema import VOICE_SOURCES, RequestError, SpeakerVoice, SynthesisRequest, parse_request
from .voices import VoiceError, VoiceLibrary, fetch_url, reference_from_base64

TokenCounter = Callable[[str], int]


@dataclass
class ResolvedVoice:
    """One prompt speaker's voice and where it came from."""

    samples: np.ndarray | None
    used: str | None  # library name, "reference_audio", "reference_audio_url" or None (no voice prompt)
    how: str  # "requested", "default" (the request named none) or "assigned" (a free library voice)
    url_host: str | None = None


@dataclass
class Plan:
    """A validated request with its voices resolved and its generation job built."""

    request: SynthesisRequest
    script: Script
    voices: dict[int, ResolvedVoice]  # prompt speaker (0-based) -> voice
    warnings: list[str]
    job: GenerationJob
    started: float  # time.perf_counter() when planning began
    text_tokens: int


class TimeLimit:
    """The job's time limit (``VV_JOB_TIMEOUT``), counted from the start of planning."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def reason(self) -> str | None:
        """The engine's ``should_stop``: why the job must stop, or None."""
        if time.monotonic() > self.deadline:
            return f"the job ran longer than its time limit of {self.seconds:g} s (VV_JOB_TIMEOUT) and was stopped"
        return None

    def check(self) -> None:
        """Raise :class:`JobStopped` once the limit has passed (between steps of planning)."""
        reason = self.reason()
        if reason is not None:
            raise JobStopped(reason)


def frame_cap(settings: Settings, text: str) -> int:
    """Most frames a text may generate, so a runaway generation stops (7.5 frames = 1 s)."""
    return min(settings.max_frames, settings.extra_frames + math.ceil(settings.frames_per_char * len(text)))


def make_plan(
    payload: object,
    *,
    settings: Settings,
    library: VoiceLibrary,
    count_tokens: TokenCounter,
    streaming_endpoint: bool = True,
    can_stream: bool = True,
) -> Plan:
    """Validate ``payload`` (a job's input) and resolve everything generation needs. Raises on bad input.

    ``streaming_endpoint``: False refuses ``stream: true`` (the endpoint's handler is not a generator);
    ``can_stream``: False when the engine has no ``stream``.
    """
    started = time.perf_counter()
    limit = TimeLimit(settings.job_timeout)
    request, script = check_request(payload, settings, streaming_endpoint=streaming_endpoint, can_stream=can_stream)
    tokens = sum(count_tokens(line.text) for line in script.lines)
    if tokens > settings.max_text_tokens:
        raise RequestError(
            f"invalid input: text: {tokens:,} tokens by the model's tokenizer, more than the limit of "
            f"{settings.max_text_tokens:,} (VV_MAX_TEXT_TOKENS); emoji and some scripts take several tokens "
            "per character: split the text into several requests (it is never truncated)"
        )
    sources = voice_sources(request, script)
    limit.check()
    voices, warnings = resolve_voices(sources, script, settings, library, limit)
    limit.check()
    job = GenerationJob(
        script=script.lines,
        voices={speaker: v.samples for speaker, v in voices.items() if v.samples is not None},
        seed=request.seed if request.seed is not None else secrets.randbelow(2**32),
        cfg_scale=request.cfg_scale if request.cfg_scale is not None else settings.cfg_scale,
        diffusion_steps=request.diffusion_steps or settings.diffusion_steps,
        max_frames=frame_cap(settings, request.text),
        temperature=request.voice_settings.temperature,
        should_stop=limit.reason,
    )
    return Plan(request, script, voices, warnings, job, started, tokens)


def check_request(
    payload: object, settings: Settings, *, streaming_endpoint: bool = True, can_stream: bool = True
) -> tuple[SynthesisRequest, Script]:
    """The checks that need neither the model nor a voice: shape and bounds, the script, output and streaming
    options. Entry points can run them before loading anything."""
    request = parse_request(payload, max_text_chars=settings.max_text_chars)
    if request.stream:  # first: it refuses segments, pause tags and long texts, which are not one generation
        check_streamable(request, streaming_endpoint=streaming_endpoint, can_stream=can_stream)
    elif request.text is None or len(request.text) > CHUNK_MAX_CHARS or has_tags(request.text):
        # a caller's mistake, not the user's: the service sends these through compose.compose
        raise ValueError("a Plan is one generation; segments, pause tags and long texts go through compose")
    try:
        script = parse_script(request.text)
    except ScriptError as error:
        raise RequestError(f"invalid input: {error}") from None
    audio.check_output_format(request.output_format, request.sample_rate)
    return request, script


def check_streamable(request: SynthesisRequest, *, streaming_endpoint: bool, can_stream: bool) -> None:
    """Streamed chunks are the model's raw audio; options that need the whole audio cannot apply."""
    if not streaming_endpoint:
        raise RequestError(
            "invalid input: stream: this endpoint does not stream; set VV_STREAMING=true on the endpoint "
            "(its outputs then become lists, see docs/API.md) or leave stream out"
        )
    if not can_stream:
        raise RequestError("invalid input: stream: streaming needs VV_ENGINE=fast (or auto)")
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
    if request.segments is not None:
        raise RequestError("invalid input: segments: not available with stream: true; send one text, or do not stream")
    try:
        tags = find_pauses(request.text or "")
    except PauseError as error:
        raise RequestError(f"invalid input: {error}") from None
    if tags:
        raise RequestError(
            f"invalid input: text: pause tags are not available with stream: true (the first is at character "
            f"{tags[0][2].position}); remove them or do not stream"
        )
    if len(request.text or "") > CHUNK_MAX_CHARS:
        raise RequestError(
            f"invalid input: text: {len(request.text)} characters; with stream: true a text is one generation, "
            f"at most {CHUNK_MAX_CHARS} characters (longer texts are split into chunks only without stream)"
        )


def voice_sources(request: SynthesisRequest, script: Script) -> dict[int, tuple[SpeakerVoice, str]]:
    """Prompt speaker -> (its requested voice source, the field path for errors).

    ``speakers[N]`` is the speaker of ``Speaker N:`` lines; the top-level ``voice`` / ``reference_audio`` /
    ``reference_audio_url`` is the first speaker's (the only one, for plain text). Both for one speaker is an error.
    """
    numbers = script.speaker_numbers
    sources: dict[int, tuple[SpeakerVoice, str]] = {}
    for key, source in (request.speakers or {}).items():
        number = int(key)
        if number not in numbers:
            spoken = ", ".join(map(str, numbers)) if script.is_dialogue else "0 (plain text is Speaker 0)"
            raise RequestError(f"invalid input: speakers.{key}: no line is spoken by Speaker {key}; speakers: {spoken}")
        sources[numbers.index(number)] = (source, f"speakers.{key}.")
    given = [name for name in VOICE_SOURCES if getattr(request, name)]
    if given:
        if 0 in sources:
            raise RequestError(
                f"invalid input: two voice sources for Speaker {numbers[0]}: {given[0]} and "
                f"speakers.{numbers[0]}; give one"
            )
        sources[0] = (SpeakerVoice(**{name: getattr(request, name) for name in given}), "")
    return sources


def load_voice(
    source: SpeakerVoice, field: str, settings: Settings, library: VoiceLibrary, limit: TimeLimit
) -> ResolvedVoice:
    """Decode one requested voice; decoding and fetching count against the job's time limit."""
    bounds = audio.ReferenceLimits(settings.reference_min_s, settings.reference_max_s)
    if source.voice:
        return ResolvedVoice(library.load(source.voice), library.canonical(source.voice), "requested")
    if source.reference_audio:
        samples = reference_from_base64(source.reference_audio, f"{field}reference_audio", bounds, limit.check)
        return ResolvedVoice(samples, "reference_audio", "requested")
    from urllib.parse import urlsplit

    try:
        raw = fetch_url(
            source.reference_audio_url,
            timeout_s=max(0.001, min(settings.url_timeout_s, limit.remaining())),
            max_bytes=settings.url_max_bytes,
            field=f"{field}reference_audio_url",
        )
    except VoiceError:
        limit.check()  # a download cut short by the job's limit is reported as that limit
        raise
    samples = audio.prepare_reference(raw, f"{field}reference_audio_url", bounds, limit.check)
    return ResolvedVoice(samples, "reference_audio_url", "requested", urlsplit(source.reference_audio_url).hostname)


def resolve_voices(
    sources: dict[int, tuple[SpeakerVoice, str]],
    script: Script,
    settings: Settings,
    library: VoiceLibrary,
    limit: TimeLimit,
) -> tuple[dict[int, ResolvedVoice], list[str]]:
    """Each prompt speaker's voice: the requested ones, then a distinct library voice for every other speaker
    (the default voice first, then manifest order). When the library has too few, that speaker has no voice
    prompt and a warning says so."""
    resolved: dict[int, ResolvedVoice] = {}
    for speaker, (source, field) in sources.items():
        limit.check()
        resolved[speaker] = load_voice(source, field, settings, library, limit)
    default = library.default(settings.default_voice)
    taken = {voice.used for voice in resolved.values()}
    pool = [name for name in dict.fromkeys([default, *library.names()]) if name and name not in taken]
    warnings = []
    for speaker in range(len(script.speaker_numbers)):
        if speaker in resolved:
            continue
        if pool:
            name = pool.pop(0)
            how = "default" if name == default else "assigned"
            resolved[speaker] = ResolvedVoice(library.load(name), name, how)
        else:
            resolved[speaker] = ResolvedVoice(None, None, "assigned")
            label = f"Speaker {script.speaker_numbers[speaker]}" if script.is_dialogue else "the text"
            reason = "the voice library is empty" if not library.names() else "no unused library voice is left"
            warnings.append(f"{reason}: {label} was generated without a voice prompt")
    return resolved, warnings
