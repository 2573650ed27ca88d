"""Voice prompts encoded once, reused by every later request with the same voice.

Stock VibeVoice encodes each reference voice inside ``generate`` on every call: acoustic
encoder -> sample sigma-VAE noise -> scale -> projector -> prompt embeddings. The encoder is the
costly, deterministic part, so its output is cached here, keyed by the voice samples' sha256.
The noise is drawn per request with exactly the calls stock makes (``randn(batch)`` then
``randn_like`` over the padded batch, right after seeding), from the request's own CPU generator
or torch's global one, so a single voice gives the same result as stock ``generate`` bit for bit
on the CPU. Voices are encoded one at a time, without the padding
stock adds to bring a batch of voices to the longest one, so a voice's prompt no longer depends
on the other voices' lengths.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


def voice_key(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


class VoicePromptCache:
    """LRU cache of acoustic-encoder latents, one entry per distinct voice."""

    def __init__(self, model, max_entries: int = 64):
        self.model = model
        self.max_entries = max_entries
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def hop_length(self) -> int:
        return self.model.config.audio_config.hop_length

    def latents(self, key: str, input_values: torch.Tensor) -> torch.Tensor:
        """Encoder latents (1, frames, latent) of one voice's processed, hop-padded waveform (1, 1, samples)."""
        cached = self._latents.get(key)
        if cached is not None:
            self.hits += 1
            self._latents.move_to_end(key)
            return cached
        self.misses += 1
        with torch.inference_mode():
            latents = self.model.model.audio_tower.encoder(input_values).latents
        self._latents[key] = latents
        if len(self._latents) > self.max_entries:
            self._latents.popitem(last=False)
        return latents

    def prompt_embeddings(
        self, voices: list[tuple[str, torch.Tensor, int]], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Embeddings for every audio placeholder of the prompt, drawing the sigma-VAE noise as stock does.

        ``voices``: (key, processed waveform (1, 1, padded samples), valid samples) per voice, in prompt order.
        ``generator``: a CPU generator fresh from seeding (None: torch's global one, right after
        ``manual_seed``); these draws come first, as they do inside stock ``generate``.
        """
        hop = self.hop_length
        frames = [int(np.ceil(valid / hop)) for _, _, valid in voices]
        means = [
            self.latents(key, values[..., : count * hop])
            for (key, values, _), count in zip(voices, frames, strict=True)
        ]
        total = max(values.shape[-1] for _, values, _ in voices) // hop
        first = means[0]
        # randn_like fills in memory order: the batch must have the encoder output's layout (a
        # channels-first buffer seen as (batch, frames, latent)) for the draws to land where stock's do
        channels_first = first.shape[1] > 1 and first.stride(1) == 1
        if channels_first:
            padded = first.new_zeros(len(means), first.shape[-1], total).transpose(1, 2)
        else:
            padded = first.new_zeros(len(means), total, first.shape[-1])
        for row, mean in enumerate(means):
            padded[row, : mean.shape[1]] = mean[0]
        tower = self.model.model.audio_tower
        if generator is None:
            noise_std = torch.randn(len(means), device=padded.device, dtype=padded.dtype)
            noise = torch.randn_like(padded)
        else:  # the same fills on the CPU (randn_like is empty_like + normal_), then to the device
            noise_std = torch.randn(len(means), generator=generator, dtype=padded.dtype).to(padded.device)
            noise = torch.empty_like(padded, device="cpu").normal_(generator=generator).to(padded.device)
        sampled = padded + (tower.config.vae_std * noise_std)[:, None, None] * noise
        base = self.model.model
        scaled = (sampled + base.latent_bias_factor.to(sampled.device)) * base.latent_scaling_factor.to(sampled.device)
        projected = base.multi_modal_projector(scaled)
        valid = torch.arange(total, device=padded.device)[None, :] < torch.tensor(frames, device=padded.device)[:, None]
        return projected[valid]
