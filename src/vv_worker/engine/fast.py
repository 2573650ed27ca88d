"""The fast engine: the original loop's semantics (see ``oracle.py``), many requests per step.

Each request is a :class:`RequestState`; one scheduler thread owns the model and steps every active
request together (continuous batching): newcomers are prefilled between steps and join the batch,
and requests leave when they finish, fail, time out or are cancelled. One step is

1. the token choice for every request from its positive hidden state (4-row LM head);
2. per request: eos/frame cap ends it, audio_eos drops its tokenizer caches, audio_bos resets its
   negative branch, the audio token commits its negative branch's speculative step;
3. one diffusion batch per distinct step count (cfg per row), then one acoustic decode and one
   semantic encode over every request that made a frame, each with its own conv caches;
4. one LLM forward over 2N rows: each request's positive row and its negative row, fed the same
   input; the negative row is speculative and counts only if the next token is the audio token
   (the original runs it only then, on the same input).

A request's noise comes from its own CPU generator seeded with its seed, drawn in the same order
as the oracle, so its audio does not depend on what else is in the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import Settings
from .base import EngineError, FinishReason, GenerationJob, GenerationResult, JobStopped, ProgressCallback
from .loaded import LoadedModel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RequestState:
    """One request's whole decode state; the engine's ops read and update it."""

    job: GenerationJob
    force_frames: bool
    noise: torch.Generator  # voice noise, then one randn(2, latent) per frame
    sampler: object | None  # AllowedTokenSampler with its own generator, when job.temperature is set
    frame_noise: torch.Tensor | None = None  # (max_frames, latent) on the device: row 0 of each frame's draw
    outbox: queue.Queue = field(default_factory=queue.Queue)  # ("audio", chunk) | ("done", None) | ("error", exc)
    pair: int = -1  # its two KV rows: 2 * pair (positive) and 2 * pair + 1 (negative)
    positive_length: int = 0  # filled slots of the positive row: its next slot and rotary position
    negative_length: int = 0  # attended slots of the negative row: its next slot and rotary position
    positive_hidden: torch.Tensor | None = None  # (1, hidden) from its last forward
    negative_hidden: torch.Tensor | None = None  # speculative, from the same forward
    next_input: torch.Tensor | None = None  # (1, 1, hidden) what the next forward consumes
    acoustic_cache: dict | None = None  # None: fresh (zeros)
    semantic_cache: dict | None = None
    tokens: list[int] = field(default_factory=list)
    frames: int = 0
    finish_reason: FinishReason | None = None
    left: bool = False  # finished, failed or cancelled: it leaves the batch after this step
    cancelled: bool = False
    batch_size: int = 0  # the most requests it was stepped together with (itself included)
    submitted: float = field(default_factory=time.perf_counter)
    first_audio_seconds: float | None = None


class FrameStream:
    """Iterator of float32 audio chunks (one per audio frame, 3200 samples each) of one request.

    Once exhausted: ``frames``, ``finish_reason``, ``tokens`` (every generated token id),
    ``first_audio_seconds`` (from submission to the first chunk) and ``batch_size`` (the most
    requests it was stepped together with) are set. ``close()`` (or dropping
    it) cancels the request.
    """

    def __init__(self, state: RequestState, on_progress: ProgressCallback | None):
        self._state = state
        self._on_progress = on_progress
        self._done = False
        self.frames = 0
        self.finish_reason: FinishReason | None = None
        self.tokens: list[int] = []
        self.first_audio_seconds: float | None = None
        self.batch_size = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        kind, value = self._state.outbox.get()
        if kind == "audio":
            self.frames += 1
            if self._on_progress is not None:
                try:
                    self._on_progress(self.frames, self._state.job.max_frames)
                except BaseException:
                    self.close()  # the caller is gone: stop generating for it
                    raise
            return value
        self._done = True
        state = self._state
        self.tokens, self.first_audio_seconds = list(state.tokens), state.first_audio_seconds
        self.batch_size = state.batch_size
        if kind == "error":
            raise value
        self.finish_reason = state.finish_reason
        raise StopIteration

    def close(self) -> None:
        self._state.cancelled = True

    def __del__(self):
        self._state.cancelled = True


class FastEngine:
    """Continuous batching over a :class:`LoadedModel` (composed: the model is shared, not inherited)."""

    def __init__(self, loaded: LoadedModel, max_batch: int = 4):
        from .fast_diffusion import DiffusionSampler
        from .ops import BatchLM, StreamingCodec

        self.loaded = loaded
        self.model_id, self.device, self.dtype = loaded.model_id, loaded.device, loaded.dtype
        self.max_batch = max_batch
        model = loaded.model
        self.lm = BatchLM(model, loaded.allowed_token_ids, max_batch)
        self.diffusion = DiffusionSampler(model, loaded.noise_scheduler())
        self.codec = StreamingCodec(model)
        self.latent_size = model.config.audio_config.hidden_size
        allowed = loaded.allowed_token_ids
        self._audio_column = allowed.index(loaded.audio_token_id)
        self.peak_batch = 0  # most requests ever stepped together (metrics and tests)
        self._one_fill_is_many = _one_fill_is_many(self.latent_size)
        self._inbox: queue.Queue[RequestState | None] = queue.Queue()  # None: close
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> FastEngine:
        loaded = LoadedModel.load(settings, path)
        return cls(loaded, settings.max_batch or default_max_batch(loaded.device))

    # --- the engine interface ------------------------------------------------------------------

    def prepare_inputs(self, job: GenerationJob) -> dict:
        return self.loaded.prepare_inputs(job)

    @property
    def voice_cache(self):
        return self.loaded.voice_cache

    def stream(
        self, job: GenerationJob, on_progress: ProgressCallback | None = None, *, force_frames: bool = False
    ) -> FrameStream:
        """Audio chunks as they are produced. ``force_frames`` (benchmarks) forbids every token but the
        audio token, so each step is a frame and exactly ``job.max_frames`` frames come out."""
        from .sampling import AllowedTokenSampler

        sampler = None
        if job.temperature is not None:
            generator = torch.Generator().manual_seed(job.seed)
            sampler = AllowedTokenSampler(self.loaded.allowed_token_ids, job.temperature, generator)
        state = RequestState(job, force_frames, torch.Generator().manual_seed(job.seed), sampler)
        self._ensure_thread()
        self._inbox.put(state)
        return FrameStream(state, on_progress)

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult:
        started = time.perf_counter()
        stream = self.stream(job, on_progress)
        chunks = list(stream)
        return GenerationResult(
            audio=np.concatenate(chunks),
            frames=stream.frames,
            finish_reason=stream.finish_reason,
            generation_seconds=time.perf_counter() - started,
            extra={
                "first_audio_seconds": stream.first_audio_seconds,
                "tokens": stream.tokens,
                "batch_size": stream.batch_size,
            },
        )

    # --- the scheduler -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vv-batch", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the scheduler thread once the requests already submitted are done (frees the model)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._inbox.put(None)
            thread.join()

    def _run(self) -> None:
        active: list[RequestState] = []
        closing = False
        while not closing or active:
            newcomers = [] if active or closing else [self._inbox.get()]
            while not closing and len(active) + len(newcomers) < self.max_batch:
                try:
                    newcomers.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for state in newcomers:
                if state is None:
                    closing = True
                else:
                    self._admit(state, active)
            if not active:
                continue
            self.peak_batch = max(self.peak_batch, len(active))
            for state in active:
                state.batch_size = max(state.batch_size, len(active))
            try:
                with torch.inference_mode():
                    self._step(active)
            except BaseException as error:  # the batch's shared work failed: every member gets the error
                log.error("batched step failed for %d request(s)", len(active), exc_info=error)
                for state in active:
                    state.outbox.put(("error", error))
                active.clear()
            self._leave(active)

    def _admit(self, state: RequestState, active: list[RequestState]) -> None:
        """Prefill a newcomer into the next free pair; a failure fails only this request."""
        if state.cancelled:
            return
        loaded, lm = self.loaded, self.lm
        try:
            with torch.inference_mode():
                prepared = loaded.prepare_inputs(state.job)
                embeds = loaded.input_embeds(prepared, state.noise)
                state.frame_noise = self._draw_frame_noise(state, embeds)
                pair = len(active)
                prompt = embeds.shape[1]
                lm.kv.ensure(prompt + state.job.max_frames + 1)
                state.positive_hidden = lm.prefill(embeds, 2 * pair)
                bos = lm.embed(torch.tensor([[loaded.audio_bos_token_id]], device=embeds.device))
                state.negative_hidden = lm.prefill(bos, 2 * pair + 1)  # the negative branch's first step
        except BaseException as error:
            state.outbox.put(("error", error))
            return
        state.pair, state.positive_length, state.negative_length = pair, prompt, 0
        active.append(state)

    def _choose(self, active: list[RequestState]) -> list[int]:
        """Each request's next token: argmax over the allowed tokens, or its own temperature draw."""
        scores = self.lm.logits(torch.cat([state.positive_hidden for state in active]))
        forced = [i for i, state in enumerate(active) if state.force_frames]
        if forced:
            keep = scores[forced, self._audio_column]
            scores[forced] = float("-inf")
            scores[forced, self._audio_column] = keep
        columns = scores.argmax(dim=-1).tolist()
        for i, state in enumerate(active):
            if state.sampler is not None:
                columns[i] = int(state.sampler.pick(scores[i : i + 1]).reshape(-1)[0])
        allowed = self.loaded.allowed_token_ids
        return [allowed[column] for column in columns]

    def _step(self, active: list[RequestState]) -> None:
        loaded, lm = self.loaded, self.lm
        device = active[0].positive_hidden.device
        framing: list[RequestState] = []
        for state, token in zip(active, self._choose(active), strict=True):
            state.tokens.append(token)
            if token in loaded.stop_token_ids:
                self._finish(state, "end_of_speech")
                continue
            if token == loaded.audio_eos_token_id:
                state.acoustic_cache = state.semantic_cache = None
            if token == loaded.audio_bos_token_id:
                state.negative_length = min(state.negative_length, 1)  # back to its first entry
            if token == loaded.audio_token_id:
                state.negative_length += 1  # the speculative negative step counts
                framing.append(state)
            else:
                state.next_input = lm.embed(torch.tensor([[token]], device=device))
        if framing:
            self._frames(framing)
        for state in active:
            if state.left:
                continue
            if len(state.tokens) >= state.job.max_frames:
                self._finish(state, "frame_cap")
            elif state.cancelled:
                state.left = True
            else:
                self._check_stop(state)
        stepping = [state for state in active if not state.left]
        if not stepping:
            return
        self._compact(active)
        embeds = torch.cat([torch.cat([state.next_input, state.next_input]) for state in stepping])
        lengths = [length for state in stepping for length in (state.positive_length, state.negative_length)]
        hidden = lm.step(embeds, lengths)
        for i, state in enumerate(stepping):
            state.positive_hidden, state.negative_hidden = hidden[2 * i : 2 * i + 1], hidden[2 * i + 1 : 2 * i + 2]
            state.positive_length += 1

    def _frames(self, framing: list[RequestState]) -> None:
        """Diffusion, decode and encode for every request whose token was the audio token."""
        device = framing[0].positive_hidden.device
        noise = [state.frame_noise[state.frames : state.frames + 1] for state in framing]
        latents: list[torch.Tensor | None] = [None] * len(framing)
        for steps in sorted({state.job.diffusion_steps for state in framing}):
            rows = [i for i, state in enumerate(framing) if state.job.diffusion_steps == steps]
            cfg = torch.tensor([[framing[i].job.cfg_scale] for i in rows], dtype=torch.float32, device=device)
            sampled = self.diffusion.sample(
                torch.cat([framing[i].positive_hidden for i in rows]),
                torch.cat([framing[i].negative_hidden for i in rows]),
                torch.cat([noise[i] for i in rows]),
                cfg,
                steps,
            )
            for row, latent in zip(rows, sampled, strict=True):
                latents[row] = latent
        batch = torch.stack(latents).unsqueeze(1)  # (n, 1, latent)
        audio, acoustic = self.codec.decode(batch, [state.acoustic_cache for state in framing])
        semantic, semantic_caches = self.codec.encode(audio, [state.semantic_cache for state in framing])
        feedback = self.codec.feedback(batch, semantic)
        samples = audio.float().reshape(len(framing), -1).cpu().numpy()  # the step's one audio read-back
        now = time.perf_counter()
        for i, state in enumerate(framing):
            state.acoustic_cache, state.semantic_cache = acoustic[i], semantic_caches[i]
            state.next_input = feedback[i : i + 1]
            state.frames += 1
            if state.first_audio_seconds is None:
                state.first_audio_seconds = now - state.submitted
            state.outbox.put(("audio", samples[i].copy()))

    def _draw_frame_noise(self, state: RequestState, like: torch.Tensor) -> torch.Tensor:
        """Every frame's diffusion noise at once, moved to the device once (no copy per frame).

        One ``randn(frames, 2, latent)`` fill equals ``frames`` successive ``randn(2, latent)`` fills
        (checked at start: ``_one_fill_is_many``); where it would not, the draws are made one by one.
        """
        frames, latent = state.job.max_frames, self.latent_size
        if self._one_fill_is_many:
            drawn = torch.randn(frames, 2, latent, generator=state.noise)
        else:
            drawn = torch.stack([torch.randn(2, latent, generator=state.noise) for _ in range(frames)])
        return drawn[:, 0].to(like.device, like.dtype)

    def _check_stop(self, state: RequestState) -> None:
        try:
            reason = state.job.should_stop() if state.job.should_stop is not None else None
            if reason is not None:
                raise JobStopped(reason)
        except BaseException as error:  # this request only
            state.left = True
            state.outbox.put(("error", error))

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        state.finish_reason, state.left = reason, True
        if state.frames == 0:
            state.outbox.put(
                ("error", EngineError("the model ended the speech before producing any audio; try another seed"))
            )
        else:
            state.outbox.put(("done", None))

    def _compact(self, active: list[RequestState]) -> None:
        """Drop finished requests, moving the last pairs into the freed ones so active pairs stay a prefix."""
        kept = [state for state in active if not state.left]
        for index, state in enumerate(kept):
            if state.pair != index:
                length = max(state.positive_length, state.negative_length) + 1
                self.lm.kv.move_pair(state.pair, index, length)
                state.pair = index
        active[:] = kept

    def _leave(self, active: list[RequestState]) -> None:
        if any(state.left for state in active):
            self._compact(active)


def _one_fill_is_many(latent: int) -> bool:
    """Whether torch's CPU generator gives the same numbers for one big normal fill as for several
    small ones of ``(2, latent)`` (it does when the small fill is a multiple of its 16-number block)."""
    whole = torch.randn(3, 2, latent, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    return torch.equal(whole, torch.stack([torch.randn(2, latent, generator=generator) for _ in range(3)]))


def default_max_batch(device: str) -> int:
    """Requests stepped together by default: 8 on a GPU (the 7B is memory-bound well past it), 4 on a CPU."""
    return 8 if device.startswith("cuda") else 4
