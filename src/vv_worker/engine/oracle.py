"""The definition of correct: the original VibeVoice per-frame loop, one request, plain and slow.

Follows ``VibeVoiceForConditionalGenerationInference.generate`` of the original implementation
(vibevoice-community/VibeVoice, ``vibevoice/modular/modeling_vibevoice_inference.py``) at batch 1,
on transformers' modules; docs/FIDELITY.md lists what it does and where others differ. Per step:

1. positive LM forward of what the previous step made (the prompt at step 0); argmax (or a
   temperature draw) over the four tokens VibeVoice may emit;
2. eos ends; audio_eos resets both tokenizers' streaming caches; audio_bos resets the negative
   branch to its first entry (its cache slot 0, its attention mask to that one slot);
3. the audio token runs the negative LM forward (its input: audio_bos at step 0, later the
   positive's input of this step; rotary position = the number of slots it attends), then the
   diffusion loop with the scheduler object and cfg only there, the streaming acoustic decode and
   semantic encode, and the next input is the two connectors' sum.

Random numbers come from one CPU generator per request seeded with its seed: the voices' noise
first, then ``randn(2, latent)`` per frame, as the original draws them from torch's global one.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..config import Settings
from .base import EngineError, GenerationJob, GenerationResult, JobStopped, ProgressCallback
from .loaded import LoadedModel


class OracleEngine:
    """One request at a time through the original loop (``VV_ENGINE=oracle``; tests and debugging)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.device = loaded.device
        self.dtype = loaded.dtype

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> OracleEngine:
        return cls(LoadedModel.load(settings, path))

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult:
        from transformers import DynamicCache

        from .sampling import AllowedTokenSampler

        started = time.perf_counter()
        loaded, model = self.loaded, self.loaded.model
        inner, lm = model.model, model.model.language_model
        device = model.device
        allowed = loaded.allowed_token_ids
        noise = torch.Generator().manual_seed(job.seed)
        sampler = None
        if job.temperature is not None:
            sampler = AllowedTokenSampler(allowed, job.temperature, torch.Generator().manual_seed(job.seed))
        scheduler = copy.deepcopy(loaded.noise_scheduler())
        embed = model.get_input_embeddings()

        def forward(inputs, cache, mask, positions):
            out = lm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, cache=cache)
            return out.last_hidden_state[:, -1]

        chunks, tokens = [], []
        with torch.inference_mode():
            prepared = loaded.prepare_inputs(job)
            prompt = loaded.input_embeds(prepared, noise)
            positive_cache, negative_cache = DynamicCache(config=lm.config), DynamicCache(config=lm.config)
            positive_length = prompt.shape[1]
            negative_mask = torch.zeros(1, 0, dtype=torch.long, device=device)  # over the negative cache's slots
            acoustic_cache = semantic_cache = None
            hidden = forward(prompt, positive_cache, None, torch.arange(positive_length, device=device)[None])
            step_input = None  # what the positive forward of this step consumed (None: the prompt)
            for step in range(job.max_frames):
                scores = model.lm_head(hidden).float()[:, allowed]
                column = sampler.pick(scores) if sampler is not None else scores.argmax(dim=-1)
                token = allowed[int(column.reshape(-1)[0])]
                tokens.append(token)
                if token in loaded.stop_token_ids:
                    break
                if token == loaded.audio_eos_token_id:
                    acoustic_cache = semantic_cache = None  # set_to_zero: a fresh cache pads with zeros
                if token == loaded.audio_bos_token_id and negative_mask.shape[1] > 0:
                    for layer in negative_cache.layers:
                        layer.keys[:, :, -1:] = layer.keys[:, :, :1]
                        layer.values[:, :, -1:] = layer.values[:, :, :1]
                    negative_mask = torch.zeros_like(negative_mask)
                    negative_mask[:, -1] = 1
                next_input = embed(torch.tensor([[token]], device=device))
                if token == loaded.audio_token_id:
                    if step_input is None:
                        step_input = embed(torch.tensor([[loaded.audio_bos_token_id]], device=device))
                    negative_mask = torch.cat([negative_mask, negative_mask.new_ones(1, 1)], dim=1)
                    position = negative_mask.sum(dim=1, keepdim=True) - 1
                    negative = forward(step_input, negative_cache, negative_mask, position)
                    latent = self._sample(scheduler, hidden, negative, job, noise)
                    scaled = latent / inner.latent_scaling_factor - inner.latent_bias_factor
                    decoded = inner.audio_tower.decode(scaled, padding_cache=acoustic_cache, use_cache=True)
                    acoustic_cache = decoded.padding_cache
                    semantic = inner.semantic_tokenizer_encoder(
                        decoded.audio, padding_cache=semantic_cache, use_cache=True
                    )
                    semantic_cache = semantic.padding_cache
                    next_input = inner.multi_modal_projector(latent) + inner.semantic_connector(semantic.latents)
                    chunks.append(decoded.audio.float().reshape(-1).cpu().numpy())
                    if on_progress is not None:
                        on_progress(len(chunks), job.max_frames)
                if step == job.max_frames - 1:
                    break
                reason = job.should_stop() if job.should_stop is not None else None
                if reason is not None:
                    raise JobStopped(reason)
                position = torch.tensor([[positive_length]], device=device)
                hidden = forward(next_input, positive_cache, None, position)
                positive_length += 1
                step_input = next_input
        if not chunks:
            error = EngineError("the model ended the speech before producing any audio; try another seed")
            error.tokens = tokens
            raise error
        hit_cap = len(tokens) >= job.max_frames and tokens[-1] not in loaded.stop_token_ids
        return GenerationResult(
            audio=np.concatenate(chunks),
            frames=len(chunks),
            finish_reason="frame_cap" if hit_cap else "end_of_speech",
            generation_seconds=time.perf_counter() - started,
            extra={"tokens": tokens},
        )

    def _sample(self, scheduler, positive, negative, job: GenerationJob, noise: torch.Generator) -> torch.Tensor:
        """The original ``sample_speech_tokens``: cfg-guided diffusion, the scheduler stepping both halves."""
        head = self.loaded.model.model.diffusion_head
        scheduler.set_timesteps(num_inference_steps=job.diffusion_steps)
        condition = torch.cat([positive, negative], dim=0)
        speech = torch.randn(2, self.loaded.model.config.audio_config.hidden_size, generator=noise).to(condition)
        for timestep in scheduler.timesteps:
            half = speech[:1]
            combined = torch.cat([half, half], dim=0)
            eps = head(combined, timestep.repeat(2).to(combined), condition=condition)
            cond_eps, uncond_eps = eps[:1], eps[1:]
            guided = uncond_eps + job.cfg_scale * (cond_eps - uncond_eps)
            speech = scheduler.step(torch.cat([guided, guided], dim=0), timestep, speech).prev_sample
        return speech[:1].unsqueeze(1)
