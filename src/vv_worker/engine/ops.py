"""Stateless batched operations of the fast engine: they act on the states they are given.

- :class:`PairedKV` + :class:`BatchLM`: the language model over 2N cache rows, two per request
  (row 2p its positive branch, row 2p+1 its CFG negative branch), each row its own length; one
  decode step writes every row at its own slot and attends only that row's filled prefix.
- :class:`StreamingCodec`: the acoustic decoder and semantic encoder over several requests at once,
  each request's conv caches kept as its own tensors and joined for the batch.
- the diffusion batch lives in ``fast_diffusion.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from .base import EngineError

KV_BUCKET = 256  # cache capacity grows in steps of this many slots


class PairedKV:
    """Preallocated keys/values ``(2 * pairs, kv_heads, capacity, head_dim)`` per layer.

    Requests hold pairs ``0 .. active - 1``; a leaving request's pair is filled by moving the last
    pair into it, so the active rows are always the prefix ``[0, 2 * active)``.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, pairs: int, dtype, device):
        self.layers, self.kv_heads, self.head_dim, self.pairs = layers, kv_heads, head_dim, pairs
        self.dtype, self.device = dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def ensure(self, slots: int) -> None:
        """Grow every row to at least ``slots`` slots, keeping what is stored."""
        if slots <= self.capacity:
            return
        capacity = -(-slots // KV_BUCKET) * KV_BUCKET
        shape = (2 * self.pairs, self.kv_heads, capacity, self.head_dim)
        old = self.capacity
        for store in (self.keys, self.values):
            for index in range(self.layers):
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if old:
                    grown[:, :, :old] = store[index]
                    store[index] = grown
                else:
                    store.append(grown)
        self.capacity = capacity

    def move_pair(self, source: int, target: int, length: int) -> None:
        """Copy pair ``source``'s first ``length`` slots into pair ``target``."""
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[2 * target : 2 * target + 2, :, :length] = tensor[2 * source : 2 * source + 2, :, :length]


class BatchLM:
    """Our own loop over the Qwen2 decoder's modules on a :class:`PairedKV`, plus a 4-row LM head."""

    def __init__(self, model, allowed_ids: list[int], max_pairs: int):
        self.lm = model.model.language_model
        config = self.lm.config
        if any(kind != "full_attention" for kind in config.layer_types):
            raise EngineError("the fast engine supports full-attention language models only (no sliding window)")
        self.layers = list(self.lm.layers[: config.num_hidden_layers])
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.groups = self.num_heads // self.kv_heads
        self.allowed_ids = list(allowed_ids)  # vocabulary order
        self.head_weight = model.lm_head.weight[self.allowed_ids].detach().clone()
        weight = self.head_weight
        self.kv = PairedKV(len(self.layers), self.kv_heads, self.head_dim, max_pairs, weight.dtype, weight.device)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed_tokens(token_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of the allowed tokens (vocabulary order) for ``hidden`` (..., hidden)."""
        return F.linear(hidden, self.head_weight).float()

    def prefill(self, embeds: torch.Tensor, row: int) -> torch.Tensor:
        """A whole sequence (1, length, hidden) into row ``row`` from slot 0, causal; its last hidden (1, hidden)."""
        length = embeds.shape[1]
        positions = torch.arange(length, device=embeds.device)[None]
        return self._forward(embeds, positions, row, None)[:, -1]

    def step(self, embeds: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """One token per active row: ``embeds`` (rows, 1, hidden), row r written at slot ``lengths[r]`` (also
        its rotary position) and attending slots ``[0, lengths[r]]``. Returns hidden states (rows, hidden).

        Attention reads only the slots up to the longest row's, never the whole capacity."""
        span = max(lengths) + 1
        lengths = torch.tensor(lengths, device=embeds.device)
        return self._forward(embeds, lengths[:, None], None, lengths, span)[:, -1]

    def _forward(self, embeds, positions, row: int | None, lengths: torch.Tensor | None, span: int = 0):
        hidden = embeds
        rows, seq = embeds.shape[:2]
        cos, sin = self.lm.rotary_emb(hidden, positions)
        if lengths is None:
            span, mask, index = seq, None, None
        else:
            mask = (torch.arange(span, device=lengths.device)[None, :] <= lengths[:, None])[:, None, None, :]
            index = torch.arange(rows, device=lengths.device)
        for number, layer in enumerate(self.layers):
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attn.q_proj(normed).view(rows, seq, -1, self.head_dim).transpose(1, 2)
            key = attn.k_proj(normed).view(rows, seq, -1, self.head_dim).transpose(1, 2)
            value = attn.v_proj(normed).view(rows, seq, -1, self.head_dim).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys, values = self.kv.keys[number], self.kv.values[number]
            if lengths is None:
                keys[row : row + 1, :, :seq] = key
                values[row : row + 1, :, :seq] = value
                out = self._attend(query, keys[row : row + 1, :, :seq], values[row : row + 1, :, :seq], None)
            else:
                keys[index, :, lengths] = key[:, :, 0]
                values[index, :, lengths] = value[:, :, 0]
                out = self._attend(query, keys[:rows, :, :span], values[:rows, :, :span], mask)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, seq, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm.norm(hidden)

    def _attend(self, query, key, value, mask) -> torch.Tensor:
        if mask is None:  # prefill: plain causal attention
            return F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=self.scaling, enable_gqa=self.groups > 1
            )
        rows, _, seq, dim = query.shape
        if seq == 1 and self.groups > 1:
            # one query token: fold the query heads of each KV head into the sequence axis (no KV repeat)
            folded = query.reshape(rows, self.kv_heads, self.groups, dim)
            out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=self.scaling)
            return out.reshape(rows, self.num_heads, 1, dim)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=self.scaling, enable_gqa=self.groups > 1
        )


class StreamingCodec:
    """Acoustic decode and semantic encode for several requests, each with its own streaming caches.

    A request's cache is a dict ``{conv name: tensor (1, channels, left_pad)}``, or None when fresh
    (a fresh transformers padding cache pads with zeros, so None means zeros).
    """

    def __init__(self, model):
        self.inner = model.model
        self.decoder_layout: dict[str, tuple[int, int]] | None = None
        self.encoder_layout: dict[str, tuple[int, int]] | None = None

    def decode(self, latents: torch.Tensor, caches: list[dict | None]) -> tuple[torch.Tensor, list[dict]]:
        """Latents (n, 1, latent) -> audio (n, 1, 3200) and each request's new acoustic cache."""
        inner = self.inner
        scaled = latents / inner.latent_scaling_factor - inner.latent_bias_factor
        if self.decoder_layout is None:
            self.decoder_layout = _layout(
                lambda cache: inner.audio_tower.decode(scaled[:1], padding_cache=cache, use_cache=True)
            )
        joined = _join(caches, self.decoder_layout, scaled)
        audio = inner.audio_tower.decode(scaled, padding_cache=joined, use_cache=True).audio
        return audio, _split(joined, len(caches))

    def encode(self, audio: torch.Tensor, caches: list[dict | None]) -> tuple[torch.Tensor, list[dict]]:
        """Audio (n, 1, 3200) -> semantic latents (n, 1, semantic) and each request's new semantic cache."""
        encoder = self.inner.semantic_tokenizer_encoder
        if self.encoder_layout is None:
            self.encoder_layout = _layout(lambda cache: encoder(audio[:1], padding_cache=cache, use_cache=True))
        joined = _join(caches, self.encoder_layout, audio)
        latents = encoder(audio, padding_cache=joined, use_cache=True).latents
        return latents, _split(joined, len(caches))

    def feedback(self, latents: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """The next LM input after a frame (n, 1, hidden)."""
        return self.inner.multi_modal_projector(latents) + self.inner.semantic_connector(semantic)


def _padding_cache():
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
        VibeVoiceAcousticTokenizerConv1dPaddingCache,
    )

    return VibeVoiceAcousticTokenizerConv1dPaddingCache()


def _layout(run) -> dict[str, tuple[int, int]]:
    """Each cached conv's (channels, left_pad), read off one throw-away streaming call."""
    cache = _padding_cache()
    run(cache)
    return {key: (layer.in_channels, layer.left_pad) for key, layer in cache.layers.items()}


def _join(caches: list[dict | None], layout: dict[str, tuple[int, int]], like: torch.Tensor):
    """One transformers padding cache holding every request's rows, in order (zeros for fresh ones)."""
    from transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer import (
        VibeVoiceAcousticTokenizerConv1dCacheLayer,
    )

    joined = _padding_cache()
    for key, (channels, left_pad) in layout.items():
        rows = [cache[key] if cache is not None else like.new_zeros(1, channels, left_pad) for cache in caches]
        layer = VibeVoiceAcousticTokenizerConv1dCacheLayer()
        layer.cache = torch.cat(rows) if len(rows) > 1 else rows[0].clone()
        layer.left_pad, layer.in_channels, layer.is_initialized = left_pad, channels, True
        joined.layers[key] = layer
    return joined


def _split(joined, count: int) -> list[dict]:
    return [{key: layer.cache[i : i + 1] for key, layer in joined.layers.items()} for i in range(count)]
