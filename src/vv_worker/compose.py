"""Requests made of several generations: pause tags, long texts and ``segments``.

A request's ``text``, or each of its ``segments``, is laid out (``longform.layout``) as chunks to generate
and pauses. Every chunk is one :class:`GenerationJob`; all jobs of the request run together (``jobs.run_jobs``,
batched by the fast engine). Each segment's audio is then assembled: its chunks crossfaded, every run of speech
rendered (speed, trimming, resampling), the pauses made exactly at the output rate, the loudness normalised over
the segment. On request, the segments are also joined ``gap`` seconds apart; nothing is processed after that
join, so a segment regenerated later can be spliced into it sample for sample.

Voices: the request's voice fields are the cast of the whole request: ``voice`` / ``reference_audio`` /
``reference_audio_url`` is the voice of the lowest-numbered speaker over all segments (Speaker 0 for plain
text), ``speakers[N]`` that of Speaker N. A segment's own voice fields override them in that segment (its
``voice`` is its own lowest-numbered speaker's). Speakers left without a voice get a library voice, the same in
every segment.

Seeds: a segment's ``seed``, else the request's, else one drawn for the whole request. Every chunk and every
piece between pauses of a segment uses the segment's seed, so each starts from the same voice-prompt noise.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from . import audio, output
from .config import Settings
from .engine import SAMPLES_PER_FRAME
from .engine.base import Engine, GenerationJob, GenerationResult, ProgressCallback
from .jobs import run_jobs
from .longform import assemble, layout
from .pauses import Pause, PauseError, join
from .plan import (
    Plan,
    ResolvedVoice,
    TimeLimit,
    TokenCounter,
    check_streamable,
    frame_cap,
    load_voice,
    resolve_voices,
    voice_sources,
)
from .prompt import Script, ScriptError, parse_script
from .schema import RequestError, Segment, SynthesisRequest, parse_request
from .voices import VoiceError, VoiceLibrary


@dataclass
class Chunk:
    """One generation of a segment."""

    index: int  # within its segment
    text: str
    tokens: int
    job: GenerationJob


@dataclass
class SegmentPlan:
    index: int
    request: SynthesisRequest  # the request's options with this segment's text
    script: Script  # the whole segment's script: its speakers
    voices: dict[int, ResolvedVoice]  # prompt speaker of ``script`` -> voice
    seed: int
    timeline: list[Chunk | Pause]
    warnings: list[str]

    @property
    def chunks(self) -> list[Chunk]:
        return [item for item in self.timeline if isinstance(item, Chunk)]


@dataclass
class Composition:
    request: SynthesisRequest
    segments: list[SegmentPlan]
    warnings: list[str]  # about the request as a whole
    started: float  # time.perf_counter() when planning began


def _prefixed(error: Exception, prefix: str) -> RequestError:
    """``error``'s message with the segment's field path put in front of the field it names."""
    message = str(error).removeprefix("invalid input: ")
    return RequestError(f"invalid input: {prefix}{message}")


def compose(payload: object, *, settings: Settings, library: VoiceLibrary, count_tokens: TokenCounter) -> Composition:
    """Validate ``payload`` and plan every generation it needs. Raises RequestError (or a voice error) on bad input."""
    started = time.perf_counter()
    limit = TimeLimit(settings.job_timeout)
    request = parse_request(payload, max_text_chars=settings.max_text_chars)
    if request.stream:
        check_streamable(request, streaming_endpoint=False, can_stream=False)
    audio.check_output_format(request.output_format, request.sample_rate)
    segments = request.segments or [Segment.model_construct(text=request.text)]
    prefixes = [f"segments.{i}." if request.segments else "" for i in range(len(segments))]

    scripts: list[Script] = []
    timelines: list[list[tuple[str, Script] | Pause]] = []  # per segment: each chunk's text and script; pauses
    left_outs: list[list[str]] = []
    for segment, prefix in zip(segments, prefixes, strict=True):
        try:
            scripts.append(parse_script(segment.text))
        except ScriptError as error:
            raise _prefixed(error, prefix) from None
        try:
            timeline, left_out = layout(segment.text, f"{prefix}text")
        except PauseError as error:
            raise RequestError(f"invalid input: {error}") from None
        # a chunk of a valid text is a valid text: longform keeps every label
        timelines.append([item if isinstance(item, Pause) else (item, parse_script(item)) for item in timeline])
        left_outs.append(left_out)
    tokens = [
        [sum(count_tokens(line.text) for line in item[1].lines) for item in timeline if not isinstance(item, Pause)]
        for timeline in timelines
    ]
    total = sum(map(sum, tokens))
    if total > settings.max_text_tokens:
        raise RequestError(
            f"invalid input: {'segments' if request.segments else 'text'}: {total:,} tokens by the model's "
            f"tokenizer, more than the limit of {settings.max_text_tokens:,} (VV_MAX_TEXT_TOKENS); emoji and some "
            "scripts take several tokens per character: split the text into several requests (it is never truncated)"
        )

    voices_by_number, warnings = _cast(request, segments, scripts, prefixes, settings, library, limit)
    drawn = secrets.randbelow(2**32)
    plans = []
    for index, (segment, prefix, script, timeline) in enumerate(
        zip(segments, prefixes, scripts, timelines, strict=True)
    ):
        seed = next(s for s in (segment.seed, request.seed, drawn) if s is not None)
        voices = voices_by_number[index]
        items: list[Chunk | Pause] = []
        counts = iter(tokens[index])
        for item in timeline:
            if isinstance(item, Pause):
                items.append(item)
                continue
            text, chunk_script = item
            by_prompt = {k: voices[n].samples for k, n in enumerate(chunk_script.speaker_numbers)}
            job = GenerationJob(
                script=chunk_script.lines,
                voices={k: samples for k, samples in by_prompt.items() if samples is not None},
                seed=seed,
                cfg_scale=request.cfg_scale if request.cfg_scale is not None else settings.cfg_scale,
                diffusion_steps=request.diffusion_steps or settings.diffusion_steps,
                max_frames=frame_cap(settings, text),
                temperature=request.voice_settings.temperature,
                should_stop=limit.reason,
            )
            items.append(Chunk(len(items) - sum(isinstance(i, Pause) for i in items), text, next(counts), job))
        plans.append(
            SegmentPlan(
                index=index,
                request=request.model_copy(update={"text": segment.text, "segments": None}),
                script=script,
                voices={k: voices[n] for k, n in enumerate(script.speaker_numbers)},
                seed=seed,
                timeline=items,
                warnings=[
                    f"{prefix}text: {piece!r} between pause tags has nothing to say and was not generated"
                    for piece in left_outs[index]
                ],
            )
        )
    limit.check()
    return Composition(request, plans, warnings, started)


def _cast(
    request: SynthesisRequest,
    segments: list[Segment],
    scripts: list[Script],
    prefixes: list[str],
    settings: Settings,
    library: VoiceLibrary,
    limit: TimeLimit,
) -> tuple[list[dict[int, ResolvedVoice]], list[str]]:
    """Per segment: speaker number -> voice. Segment overrides first, then the request's cast."""
    loaded: dict[tuple, ResolvedVoice] = {}  # one decode per distinct source in the request

    def load(source, field: str) -> ResolvedVoice:
        key = (source.voice, source.reference_audio, source.reference_audio_url)
        if key not in loaded:
            limit.check()
            try:
                loaded[key] = load_voice(source, field, settings, library, limit)
            except VoiceError as error:  # a library lookup names the field ``voice``: say whose it is
                message = str(error)
                raise VoiceError(f"{field}{message}" if message.startswith("voice: ") else message) from None
        return loaded[key]

    overrides: list[dict[int, ResolvedVoice]] = []
    for segment, script, prefix in zip(segments, scripts, prefixes, strict=True):
        own: dict[int, ResolvedVoice] = {}
        if request.segments:
            try:
                sources = voice_sources(segment, script)
            except RequestError as error:
                raise _prefixed(error, prefix) from None
            for speaker, (source, field) in sources.items():
                own[script.speaker_numbers[speaker]] = load(source, f"{prefix}{field}")
        overrides.append(own)

    dialogue = any(script.is_dialogue for script in scripts)
    every = sorted({n for script in scripts for n in script.speaker_numbers})
    needed = sorted({n for s, own in zip(scripts, overrides, strict=True) for n in s.speaker_numbers if n not in own})
    sources = voice_sources(request, Script(lines=[], speaker_numbers=every, is_dialogue=dialogue))
    warnings = [
        f"the request's voice for Speaker {every[speaker]} is not used: every segment with that speaker gives its own"
        for speaker in sources
        if every[speaker] not in needed
    ]
    position = {n: j for j, n in enumerate(needed)}
    kept = {position[every[speaker]]: pair for speaker, pair in sources.items() if every[speaker] in position}
    cast: dict[int, ResolvedVoice] = {}
    if needed:
        resolved, cast_warnings = resolve_voices(
            kept, Script(lines=[], speaker_numbers=needed, is_dialogue=dialogue), settings, library, limit
        )
        cast = {needed[j]: voice for j, voice in resolved.items()}
        warnings += cast_warnings
    return [{**cast, **own} for own in overrides], warnings


# --- running and responding --------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One segment's finished audio."""

    samples: np.ndarray
    loudness: float | None
    results: list[GenerationResult]


def run(
    composition: Composition, engine: Engine, settings: Settings, on_progress: ProgressCallback | None = None
) -> dict:
    """Generate every chunk of the request together, then build the response."""
    chunks = [chunk for segment in composition.segments for chunk in segment.chunks]
    started = time.perf_counter()
    results = iter(run_jobs(engine, [chunk.job for chunk in chunks], on_progress))
    generation_seconds = time.perf_counter() - started
    per_segment = [[next(results) for _ in segment.chunks] for segment in composition.segments]
    return respond(composition, per_segment, generation_seconds, engine, settings)


def render_segment(segment: SegmentPlan, results: list[GenerationResult]) -> Rendered:
    """Chunks crossfaded, speech rendered run by run, pauses exact at the output rate, loudness over the segment."""
    request = segment.request
    outcomes = iter(results)
    timeline = [item if isinstance(item, Pause) else next(outcomes).audio for item in segment.timeline]
    speech_only = request.model_copy(update={"normalize": None})
    samples = assemble(timeline, request.sample_rate, render=lambda run: output.render(run, speech_only)[0])
    loudness = None
    if request.normalize is not None and samples.size:
        samples = audio.normalize_loudness(samples, request.sample_rate, request.normalize)
        loudness = audio.integrated_loudness(samples, request.sample_rate)
    return Rendered(samples, loudness, results)


def _metadata(
    segment: SegmentPlan, results: list[GenerationResult], started: float, generation_seconds: float, engine: Engine
) -> dict:
    """``output.metadata_of``'s fields for a segment of several generations, plus its split (chunks, pauses)."""
    chunks = segment.chunks
    summary_job = GenerationJob(
        script=[],
        voices={},
        seed=segment.seed,
        cfg_scale=chunks[0].job.cfg_scale if chunks else 0.0,
        diffusion_steps=chunks[0].job.diffusion_steps if chunks else 0,
        max_frames=sum(chunk.job.max_frames for chunk in chunks),
    )
    tokens = sum(chunk.tokens for chunk in chunks)
    plan = Plan(segment.request, segment.script, segment.voices, segment.warnings, summary_job, started, tokens)
    frames = sum(result.frames for result in results)
    rate = segment.request.sample_rate
    metadata = output.metadata_of(plan, frames, None, generation_seconds, engine, rate)
    capped = [chunk for chunk, result in zip(chunks, results, strict=True) if result.finish_reason == "frame_cap"]
    metadata["finish_reason"] = ("frame_cap" if capped else "end_of_speech") if results else None
    metadata["warnings"] += [
        f"chunk {chunk.index} stopped at its frame cap ({chunk.job.max_frames} frames) before the model ended "
        "the speech"
        for chunk in capped
    ]
    metadata["metrics"]["chunks"] = len(chunks)
    batch = max((result.extra.get("batch_size") or 0 for result in results), default=0)
    if batch:  # fast engine: the most requests (chunks of this job included) stepped together
        metadata["metrics"]["batch_size"] = batch
    first_audio = results[0].extra.get("first_audio_seconds") if results else None
    if first_audio is not None:  # of the first chunk: when the request's first audio was ready
        metadata["metrics"]["first_audio_seconds"] = round(first_audio, 4)
    metadata["chunks"] = [
        {
            "index": chunk.index,
            "text": chunk.text,
            "characters": len(chunk.text),
            "tokens": chunk.tokens,
            "seed": chunk.job.seed,
            "frames": result.frames,
            "frame_cap": chunk.job.max_frames,
            "finish_reason": result.finish_reason,
            "generation_seconds": round(result.generation_seconds, 4),
            "audio_seconds": round(result.audio.size / audio.MODEL_SAMPLE_RATE, 4),
        }
        for chunk, result in zip(chunks, results, strict=True)
    ]
    metadata["pauses"] = [
        {"position": item.position, "seconds": float(item.seconds), "samples": item.samples(rate)}
        for item in segment.timeline
        if isinstance(item, Pause)
    ]
    return metadata


def respond(
    composition: Composition,
    results: list[list[GenerationResult]],
    generation_seconds: float,
    engine: Engine,
    settings: Settings,
) -> dict:
    """A ``text`` request: the single-audio response plus its split; ``segments``: one audio per segment."""
    request = composition.request
    rate, fmt = request.sample_rate, request.output_format
    rendered = [render_segment(s, r) for s, r in zip(composition.segments, results, strict=True)]
    encoded = [audio.encode(r.samples, rate, fmt) for r in rendered]
    gap = Pause(Decimal(str(request.gap_seconds)))
    joined = None
    if request.concat:
        pieces: list[np.ndarray | Pause] = [rendered[0].samples]
        for r in rendered[1:]:
            pieces += [gap, r.samples]
        joined = join(pieces, rate)
        encoded.append(audio.encode(joined, rate, fmt))
    deliveries = deliver_all(encoded, fmt, settings)
    common = {"format": fmt, "mime_type": audio.mime_type(fmt), "sample_rate": rate}
    metas = [
        _metadata(s, r, composition.started, generation_seconds, engine)
        for s, r in zip(composition.segments, results, strict=True)
    ]
    if not request.segments:
        meta = metas[0]
        meta["warnings"] = composition.warnings + meta["warnings"]
        duration = rendered[0].samples.size / rate
        return {
            "success": True,
            **deliveries[0],
            **common,
            "duration_seconds": duration,
            **meta,
            "loudness_lufs": rendered[0].loudness,
        }

    metrics = dict(metas[0]["metrics"])  # engine, model, guidance: the same for every segment
    segments_out = []
    for index, (r, meta, delivery) in enumerate(zip(rendered, metas, deliveries, strict=False)):
        per_segment = meta.pop("metrics")
        meta["metrics"] = {key: per_segment[key] for key in ("frames", "frame_cap", "chunks", "text_tokens")}
        segments_out.append(
            {
                "index": index,
                **delivery,
                "duration_seconds": r.samples.size / rate,
                "samples": int(r.samples.size),
                **meta,
                "loudness_lufs": r.loudness,
            }
        )
    frames = sum(s["metrics"]["frames"] for s in segments_out)
    generated = frames * SAMPLES_PER_FRAME / audio.MODEL_SAMPLE_RATE
    metrics.update(
        frames=frames,
        frame_cap=sum(s["metrics"]["frame_cap"] for s in segments_out),
        chunks=sum(s["metrics"]["chunks"] for s in segments_out),
        text_tokens=sum(s["metrics"]["text_tokens"] for s in segments_out),
        generation_seconds=round(generation_seconds, 4),
        real_time_factor=round(generation_seconds / generated, 4) if frames else None,
        segments=len(segments_out),
    )
    batch = max((m["metrics"].get("batch_size", 0) for m in metas), default=0)
    if batch:
        metrics["batch_size"] = batch
    response = {
        "success": True,
        **common,
        "duration_seconds": sum(r.samples.size for r in rendered) / rate,
        "segments": segments_out,
        "warnings": composition.warnings,
        "metrics": metrics,
    }
    if joined is not None:
        offsets, start = [], 0
        for index, r in enumerate(rendered):
            offsets.append({"index": index, "start_sample": start, "samples": int(r.samples.size)})
            start += r.samples.size + gap.samples(rate)
        response["concatenation"] = {
            **deliveries[-1],
            "duration_seconds": joined.size / rate,
            "samples": int(joined.size),
            "gap_seconds": request.gap_seconds,
            "gap_samples": gap.samples(rate),
            "segments": offsets,
        }
    total = round(time.perf_counter() - composition.started, 4)
    metrics.update(total_seconds=total, execution_time=total)
    return response


def deliver_all(encoded: list[bytes], output_format: str, settings: Settings) -> list[dict]:
    """Every output inline when all of them together fit ``VV_MAX_INLINE_BYTES``, else every one uploaded."""
    total, limit = sum(len(item) for item in encoded), settings.max_inline_bytes
    if total <= limit or len(encoded) == 1:
        return [output.deliver(item, output_format, settings) for item in encoded]
    if settings.bucket_credentials() is None:
        raise RequestError(
            f"the {len(encoded)} encoded audios are {total:,} bytes together, over the inline limit of {limit:,} "
            "bytes (VV_MAX_INLINE_BYTES; RunPod caps payloads at 10 MB for /run and 20 MB for /runsync, and base64 "
            "adds a third). Ask for a compressed output_format (mp3 or ogg), fewer segments or no concat, or "
            "configure a bucket (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) so large "
            f"results are uploaded; missing: {', '.join(settings.missing_bucket_variables())}"
        )
    return [output.deliver(item, output_format, settings, inline_limit=0) for item in encoded]
