"""The stock path: transformers' own VibeVoice ``generate``, loaded once per process."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ..config import Runtime, Settings, resolve_runtime
from ..prompt import build_conversation, voice_order
from .base import EngineError, GenerationJob, GenerationResult, JobStopped, ProgressCallback
from .voice_cache import VoicePromptCache, voice_key

log = logging.getLogger(__name__)


class ReferenceEngine:
    """Holds the processor and model; turns a :class:`GenerationJob` into audio."""

    def __init__(self, model, processor, runtime: Runtime, model_id: str):
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = runtime.device
        self.dtype = runtime.dtype
        self.voice_cache = VoicePromptCache(model)
        config = model.config
        self.audio_token_id = config.audio_token_id
        self.eos_token_id = config.eos_token_id
        self.allowed_token_ids = [
            config.audio_bos_token_id,
            config.audio_eos_token_id,
            config.audio_token_id,
            config.eos_token_id,
        ]

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> ReferenceEngine:
        """Load processor and model onto the configured device, in eval mode.

        ``path`` is where to load from (default ``settings.model``); metrics keep naming
        ``settings.model``. A local folder is loaded with the hub switched off, so no network call
        can happen.
        """
        runtime = resolve_runtime(settings)
        path = path or settings.model
        local = Path(path).expanduser().is_dir()
        if local:
            os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoProcessor, VibeVoiceForConditionalGeneration

        started = time.perf_counter()
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=local)
            model = VibeVoiceForConditionalGeneration.from_pretrained(
                path,
                dtype=getattr(torch, runtime.dtype),
                # only the language model has attention; the audio towers refuse sdpa
                attn_implementation={"text_config": runtime.attn_implementation},
                local_files_only=local,
            )
        except (OSError, ValueError, KeyError) as error:
            raise EngineError(
                f"could not load the VibeVoice checkpoint {settings.model!r} (VV_MODEL): {error}. "
                "It must be a transformers-format VibeVoice repo (for example vibevoice/VibeVoice-7B-hf) "
                "or a folder saved with save_pretrained."
            ) from error
        model = model.to(runtime.device).eval()
        log.info(
            "loaded %s from %s on %s (%s, %s) in %.1f s",
            settings.model,
            path,
            runtime.device,
            runtime.dtype,
            runtime.attn_implementation,
            time.perf_counter() - started,
        )
        return cls(model, processor, runtime, settings.model)

    def prepare_inputs(self, job: GenerationJob) -> dict:
        """Tokenized prompt via the checkpoint's chat template, plus each voice's processed waveform.

        ``sanitize_control_tokens`` makes special tokens inside user text plain text, so a request
        cannot inject prompt structure.
        """
        conversation = build_conversation(job.script, job.voices)
        batch = self.processor.apply_chat_template(
            conversation,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
        )
        device = self.model.device
        prepared = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
            "voices": [],
        }
        if "input_values" in batch:
            values = batch["input_values"].to(device, self.model.dtype)
            valid = batch["padding_mask"].sum(dim=-1).tolist()
            for row, speaker in enumerate(voice_order(job.script, job.voices)):
                prepared["voices"].append((voice_key(job.voices[speaker]), values[row : row + 1], int(valid[row])))
        return prepared

    def model_inputs(self, prepared: dict) -> dict:
        """``generate`` keyword arguments; with voices, the prompt embeddings come from the voice cache.

        Call right after seeding: the voices' sigma-VAE noise is the first draw, as in stock generate.
        """
        inputs = {"input_ids": prepared["input_ids"], "attention_mask": prepared["attention_mask"]}
        if prepared["voices"]:
            import torch

            with torch.inference_mode():
                embeds = self.model.get_input_embeddings()(prepared["input_ids"])
                audio = self.voice_cache.prompt_embeddings(prepared["voices"]).to(embeds.dtype)
                placeholders = (prepared["input_ids"] == self.audio_token_id).unsqueeze(-1).expand_as(embeds)
                inputs["inputs_embeds"] = embeds.masked_scatter(placeholders, audio)
        return inputs

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .sampling import AllowedTokenSampler, FrameProgress, StopWhen

        prepared = self.prepare_inputs(job)
        prompt_length = prepared["input_ids"].shape[1]
        torch.manual_seed(job.seed)  # the voices' latent noise and the diffusion noise draw from it
        inputs = self.model_inputs(prepared)

        extra: dict = {}
        if job.temperature is not None:
            generator = torch.Generator(device="cpu").manual_seed(job.seed)
            sampler = AllowedTokenSampler(self.allowed_token_ids, job.temperature, generator)
            extra["logits_processor"] = LogitsProcessorList([sampler])
        if on_progress is not None:
            extra["streamer"] = FrameProgress(self.audio_token_id, job.max_frames, on_progress)
        stop = None
        if job.should_stop is not None:
            stop = StopWhen(job.should_stop)
            extra["stopping_criteria"] = StoppingCriteriaList([stop])

        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
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
        frames = int((new_tokens == self.audio_token_id).sum())
        hit_cap = new_tokens.numel() >= job.max_frames and int(new_tokens[-1]) != self.eos_token_id
        audio = output.audio[0]
        if audio is None or frames == 0:
            raise EngineError("the model ended the speech before producing any audio; try another seed")
        samples = audio.detach().float().reshape(-1).cpu().numpy().astype(np.float32, copy=False)
        return GenerationResult(
            audio=samples,
            frames=frames,
            finish_reason="frame_cap" if hit_cap else "end_of_speech",
            generation_seconds=seconds,
        )
