"""The checkpoint in memory, shared by every engine: model, processor, token ids, prompt building."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..config import Runtime, Settings, resolve_runtime
from ..prompt import build_conversation, voice_order
from .base import EngineError, GenerationJob
from .voice_cache import VoicePromptCache, voice_key

log = logging.getLogger(__name__)


class LoadedModel:
    """Processor and model on their device, in eval mode, loaded once per process."""

    def __init__(self, model, processor, runtime: Runtime, model_id: str):
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = runtime.device
        self.dtype = runtime.dtype
        self.runtime = runtime
        self.voice_cache = VoicePromptCache(model)
        config = model.config
        self.audio_token_id = config.audio_token_id
        self.audio_bos_token_id = config.audio_bos_token_id
        self.audio_eos_token_id = config.audio_eos_token_id
        self.eos_token_id = config.eos_token_id
        # the only tokens VibeVoice may emit, in vocabulary order (argmax over them breaks ties like the full vocab)
        self.allowed_token_ids = sorted(
            {self.audio_bos_token_id, self.audio_eos_token_id, self.audio_token_id, self.eos_token_id}
        )
        eos = model.generation_config.eos_token_id
        eos = config.eos_token_id if eos is None else eos
        self.stop_token_ids = frozenset(eos if isinstance(eos, list) else [eos])
        tokenizer = processor.tokenizer
        # Every added token, special or not, is escaped when it appears in user text (see prepare_inputs).
        tokenizer.chat_control_tokens = [token.content for token in tokenizer.added_tokens_decoder.values()]

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> LoadedModel:
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
        except Exception as error:  # OSError, ValueError, RuntimeError (size mismatch), SafetensorError, ...
            raise EngineError(
                f"could not load the VibeVoice checkpoint {settings.model!r} from {path}: "
                f"{type(error).__name__}: {error}. It must be a transformers-format VibeVoice repo (for example "
                "vibevoice/VibeVoice-7B-hf) or a folder saved with save_pretrained; an original-format checkpoint "
                "converts with scripts/convert_checkpoint.py."
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

        ``sanitize_control_tokens`` (with every added token listed as a control token at init) makes
        any added token inside user text plain text, so a request cannot inject prompt structure.
        """
        conversation = build_conversation(job.script, job.voices)
        batch = self.processor.apply_chat_template(
            conversation,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            add_generation_prompt=True,
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

    def prompt_embeds(self, prepared: dict, generator: torch.Generator | None) -> torch.Tensor | None:
        """Prompt embeddings (1, length, hidden) with the voices' latents in the audio-token slots.

        Draws the voices' sigma-VAE noise from ``generator`` (None: torch's global generator, as
        stock ``generate`` does). Returns None for a prompt without voices.
        """
        if not prepared["voices"]:
            return None
        ids = prepared["input_ids"]
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids)
            audio = self.voice_cache.prompt_embeddings(prepared["voices"], generator).to(embeds.dtype)
            placeholders = (ids == self.audio_token_id).unsqueeze(-1).expand_as(embeds)
            return embeds.masked_scatter(placeholders, audio)

    def input_embeds(self, prepared: dict, generator: torch.Generator | None) -> torch.Tensor:
        """Prompt embeddings (1, length, hidden), voices or not."""
        embeds = self.prompt_embeds(prepared, generator)
        if embeds is None:
            with torch.inference_mode():
                embeds = self.model.get_input_embeddings()(prepared["input_ids"])
        return embeds

    def noise_scheduler(self):
        """The checkpoint's diffusion noise scheduler (a fresh object built from its generation config)."""
        generation_config = self.model.generation_config
        scheduler = getattr(generation_config, "noise_scheduler", None)
        if scheduler is None:
            scheduler = type(self.model)._build_default_noise_scheduler(generation_config)
        return scheduler
