"""The stock path: transformers' own VibeVoice ``generate``, kept as the benchmark baseline.

It differs from the original implementation (docs/FIDELITY.md): with ``cfg_scale != 1`` transformers
also mixes an unconditional LM forward into the token choice, it keeps the tokenizers' streaming
caches across audio_eos, and it keeps counting the negative branch's rotary positions after an
audio_bos reset. The tests show where it agrees with the oracle and where it does not.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..config import Settings
from .base import EngineError, GenerationJob, GenerationResult, JobStopped, ProgressCallback
from .loaded import LoadedModel


class ReferenceEngine:
    """Turns a :class:`GenerationJob` into audio with ``model.generate``."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.device = loaded.device
        self.dtype = loaded.dtype

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> ReferenceEngine:
        return cls(LoadedModel.load(settings, path))

    def prepare_inputs(self, job: GenerationJob) -> dict:
        return self.loaded.prepare_inputs(job)

    @property
    def voice_cache(self):
        return self.loaded.voice_cache

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .sampling import AllowedTokenSampler, FrameProgress, StopWhen

        loaded = self.loaded
        prepared = loaded.prepare_inputs(job)
        prompt_length = prepared["input_ids"].shape[1]
        torch.manual_seed(job.seed)  # the voices' latent noise and the diffusion noise draw from it
        inputs = {"input_ids": prepared["input_ids"], "attention_mask": prepared["attention_mask"]}
        embeds = loaded.prompt_embeds(prepared, None)
        if embeds is not None:
            inputs["inputs_embeds"] = embeds

        extra: dict = {}
        if job.temperature is not None:
            generator = torch.Generator(device="cpu").manual_seed(job.seed)
            sampler = AllowedTokenSampler(loaded.allowed_token_ids, job.temperature, generator)
            extra["logits_processor"] = LogitsProcessorList([sampler])
        if on_progress is not None:
            extra["streamer"] = FrameProgress(loaded.audio_token_id, job.max_frames, on_progress)
        stop = None
        if job.should_stop is not None:
            stop = StopWhen(job.should_stop)
            extra["stopping_criteria"] = StoppingCriteriaList([stop])

        started = time.perf_counter()
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs,
                max_new_tokens=job.max_frames,
                guidance_scale=job.cfg_scale,
                num_diffusion_steps=job.diffusion_steps,
                return_dict_in_generate=True,
                **extra,
            )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        if stop is not None and stop.reason is not None:
            raise JobStopped(stop.reason)

        new_tokens = output.sequences[0, prompt_length:]
        frames = int((new_tokens == loaded.audio_token_id).sum())
        hit_cap = new_tokens.numel() >= job.max_frames and int(new_tokens[-1]) not in loaded.stop_token_ids
        audio = output.audio[0]
        if audio is None or frames == 0:
            raise EngineError("the model ended the speech before producing any audio; try another seed")
        samples = audio.detach().float().reshape(-1).cpu().numpy().astype(np.float32, copy=False)
        return GenerationResult(
            audio=samples,
            frames=frames,
            finish_reason="frame_cap" if hit_cap else "end_of_speech",
            generation_seconds=seconds,
            extra={"tokens": new_tokens.tolist()},
        )
