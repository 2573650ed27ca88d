"""The fast path: our own per-frame decode loop over the model's modules, same results as stock.

Per frame: one LLM forward of two rows (positive prompt branch and CFG negative branch) on a
static KV cache, a 4-row LM head, the diffusion loop on precomputed DPM-Solver coefficients, then
the streaming acoustic decode and semantic encode (the tokenizers' own padding caches). Audio
leaves frame by frame through :meth:`FastEngine.stream`.

Equivalence with transformers' ``generate`` (same seed, same tokens, allclose audio) is what the
tests check; the choices below follow from it:

- Random numbers are drawn exactly as stock draws them: ``torch.manual_seed(seed)`` before the
  prompt, the voice latents' sampling inside ``get_audio_features``, then one CPU
  ``torch.randn(2, latent)`` per audio frame.
- The negative branch is computed speculatively in row 1 of every step and committed only when
  the step's token is the audio token (stock runs it only then). Stock gives it rotary positions
  by its physical cache length, and on a generated audio_bos masks out its whole history; row 1
  keeps the same positions and mask.
- ``generate``'s frame cap counts generated tokens, as stock's ``max_new_tokens`` does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np

from .base import EngineError, FinishReason, GenerationJob, GenerationResult, JobStopped, ProgressCallback
from .reference import ReferenceEngine


class FrameStream:
    """Iterator of float32 audio chunks (one per audio frame, 3200 samples each).

    Once exhausted: ``frames``, ``finish_reason``, ``tokens`` (every generated token id) and
    ``first_audio_seconds`` (from the start of iteration to the first chunk) are set.
    """

    def __init__(self, engine: FastEngine, job: GenerationJob, on_progress: ProgressCallback | None, force: bool):
        self.frames = 0
        self.finish_reason: FinishReason | None = None
        self.tokens: list[int] = []
        self.first_audio_seconds: float | None = None
        self._chunks = engine._frames(job, on_progress, force, self)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._chunks)


class FastEngine(ReferenceEngine):
    """Same loading and prompt building as :class:`ReferenceEngine`; its own decode loop."""

    def __init__(self, model, processor, runtime, model_id: str):
        super().__init__(model, processor, runtime, model_id)
        from .fast_diffusion import DiffusionSampler
        from .fast_lm import PairedDecoder

        config = model.config
        self.audio_bos_token_id = config.audio_bos_token_id
        self.decoder = PairedDecoder(model, self.allowed_token_ids)
        generation_config = model.generation_config
        scheduler = getattr(generation_config, "noise_scheduler", None)
        if scheduler is None:
            scheduler = type(model)._build_default_noise_scheduler(generation_config)
        self.diffusion = DiffusionSampler(model, scheduler)
        eos = generation_config.eos_token_id
        eos = config.eos_token_id if eos is None else eos
        self.stop_token_ids = set(eos if isinstance(eos, list) else [eos])
        self.cuda_graphs = None  # a fast_cuda.GraphOps when CUDA graphs are on
        if self.device.startswith("cuda") and os.environ.get("VV_FAST_CUDA_GRAPHS", "1") != "0":
            from .fast_cuda import enable_cuda_graphs

            enable_cuda_graphs(self)

    def stream(
        self, job: GenerationJob, on_progress: ProgressCallback | None = None, *, force_frames: bool = False
    ) -> FrameStream:
        """Audio chunks as they are produced. ``force_frames`` (benchmarks) forbids every token but the
        audio token, so each step is a frame and exactly ``job.max_frames`` frames come out."""
        return FrameStream(self, job, on_progress, force_frames)

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult:
        import torch

        started = time.perf_counter()
        stream = self.stream(job, on_progress)
        chunks = list(stream)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return GenerationResult(
            audio=np.concatenate(chunks),
            frames=stream.frames,
            finish_reason=stream.finish_reason,
            generation_seconds=seconds,
            extra={"engine": "fast", "first_audio_seconds": stream.first_audio_seconds},
        )

    # --- the loop -------------------------------------------------------------------------------

    def _prompt_embeds(self, prepared: dict):
        """Prompt embeddings with the voice latents in the audio-token slots (draws the voice noise).

        The voices come from the shared voice-prompt cache, drawn exactly as stock draws them.
        """
        inputs = self.model_inputs(prepared)
        if "inputs_embeds" in inputs:
            return inputs["inputs_embeds"]
        return self.decoder.embed(inputs["input_ids"])

    def _ops(self):
        if self.cuda_graphs is not None:
            return self.cuda_graphs
        return EagerOps(self)

    def _choose(self, scores, sampler, forbidden) -> int:
        import torch

        if forbidden is not None:
            scores = scores.masked_fill(forbidden, float("-inf"))
        column = sampler.pick(scores) if sampler is not None else torch.argmax(scores, dim=-1)
        return self.decoder.allowed_ids[int(column.reshape(-1)[0])]

    def _frames(self, job: GenerationJob, on_progress, force: bool, out: FrameStream):
        import torch

        from .sampling import AllowedTokenSampler

        started = time.perf_counter()
        decoder = self.decoder
        device = self.model.device
        inputs = self.prepare_inputs(job)
        torch.manual_seed(job.seed)  # same draws as the reference engine
        sampler = None
        if job.temperature is not None:
            generator = torch.Generator(device="cpu").manual_seed(job.seed)
            sampler = AllowedTokenSampler(self.allowed_token_ids, job.temperature, generator)
        forbidden = None
        if force:
            forbidden = torch.tensor([tid != self.audio_token_id for tid in decoder.allowed_ids], device=device)

        with torch.inference_mode():
            embeds = self._prompt_embeds(inputs)
            prompt = embeds.shape[1]
            ops = self._ops()
            capacity = ops.start(prompt + job.max_frames)
            self.diffusion.prepare(job.diffusion_steps, embeds.dtype, device)
            slots = torch.arange(prompt, device=device)
            positive = decoder.forward(embeds, slice(0, 1), slots, slots[None], None, prompt)[:, -1]
            # Stock's negative branch starts from audio_bos alone; ours sits in row 1 at the last prompt slot.
            mask = torch.zeros(2, capacity, dtype=torch.bool, device=device)
            mask[0, :prompt] = True
            first = mask[1:2, :prompt].clone()
            first[0, -1] = True
            bos = torch.full((1, 1), self.audio_bos_token_id, device=device)
            negative = decoder.forward(
                decoder.embed(bos), slice(1, 2), slots[-1:], torch.zeros(1, 1, dtype=torch.long, device=device),
                first[:, None, None, :], prompt,
            )[:, -1]  # fmt: skip

        latent_size = self.model.config.audio_config.hidden_size
        negative_length = 0  # tokens in the negative branch's stock cache: its next rotary position
        for step in range(job.max_frames):
            slot = prompt - 1 + step
            audio = None
            with torch.inference_mode():
                token = self._choose(decoder.logits(positive), sampler, forbidden)
                out.tokens.append(token)
                if token == self.audio_bos_token_id:
                    mask[1].zero_()  # stock resets the negative branch to the new audio_bos alone
                if token == self.audio_token_id:
                    mask[1, slot] = True  # commit the speculative negative step
                    negative_length += 1
                    noise = torch.randn(2, latent_size)  # the stock draw: CPU generator, then the device
                    audio = ops.audio(positive, negative, noise, job.cfg_scale, job.diffusion_steps)
                last = token in self.stop_token_ids or step == job.max_frames - 1
                if not last:
                    if audio is not None:
                        embed = ops.feedback()
                    else:
                        embed = decoder.embed(torch.full((1, 1), token, device=device))
                    mask[0, slot + 1] = True
                    positive, negative = ops.advance(embed, slot + 1, negative_length, mask)
                # read back after the next step is queued: on CUDA, the frame's one wait for the device
                chunk = None if audio is None else audio.float().reshape(-1).cpu().numpy()
            if chunk is not None:
                out.frames += 1
                if out.first_audio_seconds is None:
                    out.first_audio_seconds = time.perf_counter() - started
                if on_progress is not None:
                    on_progress(out.frames, job.max_frames)
                yield chunk
            if last:
                break
            if job.should_stop is not None:  # after the step, like stock's stopping criteria
                reason = job.should_stop()
                if reason is not None:
                    raise JobStopped(reason)
        hit_cap = len(out.tokens) >= job.max_frames and out.tokens[-1] != self.eos_token_id
        out.finish_reason = "frame_cap" if hit_cap else "end_of_speech"
        if out.frames == 0:
            raise EngineError("the model ended the speech before producing any audio; try another seed")


class EagerOps:
    """The per-frame work after the token choice, run op by op (CPU, or CUDA without graphs)."""

    def __init__(self, engine: FastEngine):
        self.engine = engine
        self.inner = engine.model.model
        self.decoder = engine.decoder
        self.acoustic_cache = self.semantic_cache = None
        self.latent = self.audio_out = None

    def start(self, needed: int) -> int:
        """Fresh streaming state and a KV cache of at least ``needed`` slots; returns its capacity."""
        self.acoustic_cache = self.semantic_cache = None
        self.decoder.allocate(needed)
        return self.decoder.capacity

    def audio(self, positive, negative, noise, cfg_scale: float, steps: int):
        """Diffusion + streaming acoustic decode of one frame: audio (1, 1, 3200) on the device."""
        inner = self.inner
        noise = noise.to(positive)
        self.latent = self.engine.diffusion.sample(positive, negative, noise, cfg_scale, steps).unsqueeze(1)
        scaled = self.latent / inner.latent_scaling_factor - inner.latent_bias_factor
        decoded = inner.audio_tower.decode(scaled, padding_cache=self.acoustic_cache, use_cache=True)
        self.acoustic_cache = decoded.padding_cache
        self.audio_out = decoded.audio
        return self.audio_out

    def feedback(self):
        """Next LM input after an audio frame: acoustic + semantic embeddings of what was just made."""
        inner = self.inner
        semantic = inner.semantic_tokenizer_encoder(self.audio_out, padding_cache=self.semantic_cache, use_cache=True)
        self.semantic_cache = semantic.padding_cache
        return inner.multi_modal_projector(self.latent) + inner.semantic_connector(semantic.latents)

    def advance(self, embed, slot: int, negative_length: int, mask):
        """Both rows through the LM at ``slot``: (positive hidden (1, H), negative hidden (1, H))."""
        import torch

        attend = mask[:, : slot + 1].clone()
        attend[1, slot] = True  # row 1 always attends its own (speculative) token
        positions = torch.tensor([[slot], [negative_length]], device=mask.device)
        pair = embed.reshape(1, 1, -1).expand(2, 1, -1)
        hidden = self.decoder.forward(pair, slice(0, 2), positions[0], positions, attend[:, None, None, :], slot + 1)
        return hidden[:1, -1], hidden[1:, -1]
