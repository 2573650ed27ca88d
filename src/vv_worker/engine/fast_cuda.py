"""CUDA graphs for the fast engine's per-frame work.

UNTESTED ON A GPU: written and reviewed without one (no GPU was lent to the task that wrote it).
Nothing here runs on the CPU. ``enable_cuda_graphs`` protects the worker: it runs a short
generation eagerly and with graphs at load time and keeps the graphs only if both agree; any
exception or disagreement leaves the engine on the eager path with a warning. Turn graphs off
with ``VV_FAST_CUDA_GRAPHS=0``.

Two graphs per frame, replayed back to back with no host sync between them:
- the two-row LLM step, over the whole static KV cache (rounded up to ``BUCKET`` slots) with
  the slot mask, inputs in fixed buffers (embedding, slot, positions, mask);
- the audio frame for one (cfg_scale, steps) pair: the diffusion loop, the streaming acoustic
  decode, the semantic encode and the next LLM input, with the tokenizers' conv caches as fixed
  buffers (zeroed per request; snapshotted and restored around a capture that happens mid-request).
Noise is still drawn by the CPU generator like stock, then copied through a pinned buffer. The
frame's one wait for the device is the audio read-back after the next LLM step is queued; the
token choice reads 4 logits that are already there by then.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from ..prompt import ScriptLine
from .base import GenerationJob
from .fast import EagerOps, FastEngine

log = logging.getLogger(__name__)

BUCKET = 1024  # KV cache capacity granularity (one LLM graph per capacity)
MAX_AUDIO_GRAPHS = 8  # (cfg_scale, steps) pairs kept captured


def _padding_cache():
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
        VibeVoiceAcousticTokenizerConv1dPaddingCache,
    )

    return VibeVoiceAcousticTokenizerConv1dPaddingCache()


def _capture(fn):
    """Warm ``fn`` up on a side stream, then capture it; returns (graph, fn's output).

    Each graph gets its own memory pool: with a shared pool, one graph's scratch memory could hold
    another's outputs, and the frame reads the audio after the next LLM step has replayed.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


class GraphOps(EagerOps):
    """Same interface as :class:`EagerOps`; ``audio`` and ``advance`` replay CUDA graphs."""

    def __init__(self, engine: FastEngine):
        if not engine.device.startswith("cuda") or not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need the model on a CUDA device")
        super().__init__(engine)
        config = engine.model.config
        device, dtype = engine.model.device, engine.model.dtype
        hidden = config.text_config.hidden_size
        latent = config.audio_config.hidden_size
        self.embed_in = torch.zeros(2, 1, hidden, device=device, dtype=dtype)
        self.slot_in = torch.zeros(1, dtype=torch.long, device=device)
        self.positions_in = torch.zeros(2, 1, dtype=torch.long, device=device)
        self.conditions_in = torch.zeros(2, hidden, device=device, dtype=dtype)
        self.noise_in = torch.zeros(2, latent, device=device)
        self.noise_host = torch.zeros(2, latent).pin_memory()
        self.mask_in: torch.Tensor | None = None
        self.lm_graph = None
        self.lm_out = None
        self.audio_graphs: OrderedDict = OrderedDict()
        self.caches = (_padding_cache(), _padding_cache())  # acoustic decoder, semantic encoder
        self.feedback_out = None

    # --- request state ---------------------------------------------------------------------------

    def _cache_tensors(self) -> list[torch.Tensor]:
        return [layer.cache for cache in self.caches for layer in cache.layers.values()]

    def start(self, needed: int) -> int:
        capacity = -(-needed // BUCKET) * BUCKET
        if capacity > self.decoder.capacity or self.lm_graph is None:
            self.decoder.allocate(max(capacity, self.decoder.capacity))
            self.mask_in = torch.zeros(2, self.decoder.capacity, dtype=torch.bool, device=self.embed_in.device)
            self.lm_graph, self.lm_out = _capture(self._lm_step)
        for tensor in self._cache_tensors():
            tensor.zero_()
        return self.decoder.capacity

    # --- graphed work ----------------------------------------------------------------------------

    def _lm_step(self):
        attend = self.mask_in.clone()
        attend[1].index_fill_(0, self.slot_in, True)
        hidden = self.decoder.forward(
            self.embed_in, slice(0, 2), self.slot_in, self.positions_in, attend[:, None, None, :], self.decoder.capacity
        )
        return hidden[:, -1]

    def _audio_step(self, cfg_scale: float, steps: int):
        inner = self.inner
        noise = self.noise_in.to(self.conditions_in.dtype)
        positive, negative = self.conditions_in[:1], self.conditions_in[1:]
        latent = self.engine.diffusion.sample(positive, negative, noise, cfg_scale, steps).unsqueeze(1)
        scaled = latent / inner.latent_scaling_factor - inner.latent_bias_factor
        audio = inner.audio_tower.decode(scaled, padding_cache=self.caches[0], use_cache=True).audio
        semantic = inner.semantic_tokenizer_encoder(audio, padding_cache=self.caches[1], use_cache=True)
        embed = inner.multi_modal_projector(latent) + inner.semantic_connector(semantic.latents)
        return audio, embed

    def _audio_graph(self, cfg_scale: float, steps: int):
        key = (cfg_scale, steps)
        if key not in self.audio_graphs:
            saved = {id(t): t.clone() for t in self._cache_tensors()}  # capture runs the frame once
            self.audio_graphs[key] = _capture(lambda: self._audio_step(cfg_scale, steps))
            for tensor in self._cache_tensors():  # layers created by the warm-up start from zeros
                if id(tensor) in saved:
                    tensor.copy_(saved[id(tensor)])
                else:
                    tensor.zero_()
            while len(self.audio_graphs) > MAX_AUDIO_GRAPHS:
                self.audio_graphs.popitem(last=False)
        self.audio_graphs.move_to_end(key)
        return self.audio_graphs[key]

    def audio(self, positive, negative, noise, cfg_scale: float, steps: int):
        self.conditions_in[:1].copy_(positive)
        self.conditions_in[1:].copy_(negative)
        self.noise_host.copy_(noise)
        self.noise_in.copy_(self.noise_host, non_blocking=True)
        graph, (audio, embed) = self._audio_graph(cfg_scale, steps)
        graph.replay()
        self.feedback_out = embed
        return audio

    def feedback(self):
        return self.feedback_out

    def advance(self, embed, slot: int, negative_length: int, mask):
        self.embed_in.copy_(embed.reshape(1, 1, -1).expand(2, 1, -1))
        self.slot_in.fill_(slot)
        self.positions_in[0].fill_(slot)
        self.positions_in[1].fill_(negative_length)
        self.mask_in.copy_(mask)
        self.lm_graph.replay()
        return self.lm_out[:1], self.lm_out[1:]


def enable_cuda_graphs(engine: FastEngine, frames: int = 4) -> bool:
    """Turn graphs on if a short generation with them matches the eager one; else stay eager."""
    script = [ScriptLine(0, "Warming up.")]
    job = GenerationJob(script=script, voices={}, seed=0, cfg_scale=1.3, diffusion_steps=10, max_frames=frames)
    try:
        engine.cuda_graphs = None
        eager = engine.generate(job).audio
        engine.cuda_graphs = GraphOps(engine)
        graphed = engine.generate(job).audio
        error = float(np.linalg.norm(graphed - eager) / max(np.linalg.norm(eager), 1e-12))
        if graphed.shape != eager.shape or not error < 1e-2:
            raise RuntimeError(f"graph replay differs from eager (relative error {error:.3g})")
    except Exception as failure:  # any failure: the eager path still works
        log.warning("CUDA graphs off for the fast engine: %s", failure)
        engine.cuda_graphs = None
        return False
    log.info("CUDA graphs on for the fast engine (self-check relative error %.2g)", error)
    return True
