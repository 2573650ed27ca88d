"""The language model as two rows of one forward: row 0 is the prompt (positive) branch, row 1 the
classifier-free-guidance negative branch.

Our own loop over the Qwen2 decoder's modules with a preallocated KV cache of shape
``(2, kv_heads, capacity, head_dim)`` per layer. Each row has its own positions and its own
attention mask over cache slots; a decode step writes both rows at the same slot, and the mask
says which slots a row may read. The LM head is cut to the rows of the tokens VibeVoice may emit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from .base import EngineError


class PairedDecoder:
    """Static-cache, two-row decoder over ``model.model.language_model`` plus a 4-row LM head."""

    def __init__(self, model, allowed_ids: list[int]):
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
        # Rows in vocabulary order, so argmax over them breaks ties like argmax over the full vocab.
        self.allowed_ids = sorted(set(allowed_ids))
        self.head_weight = model.lm_head.weight[self.allowed_ids].detach().clone()
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = 0

    def allocate(self, capacity: int) -> None:
        """Make sure the cache holds ``capacity`` slots per row (grows, never shrinks)."""
        if capacity <= self.capacity:
            return
        weight = self.head_weight
        shape = (2, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in self.layers]
        self.capacity = capacity

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed_tokens(token_ids)

    def forward(
        self,
        embeds: torch.Tensor,
        rows: slice,
        slots: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        length: int,
    ) -> torch.Tensor:
        """Run ``embeds`` (rows, seq, hidden) through the decoder; return the final-norm hidden states.

        ``slots`` (seq,) are the cache slots written, shared by the rows; ``positions`` (rows, seq) the
        rotary positions; ``mask`` (rows, 1, seq, length) bool over slots ``[0, length)``, or None for a
        causal prefill that starts at slot 0.
        """
        hidden = embeds
        batch, seq = embeds.shape[:2]
        cos, sin = self.lm.rotary_emb(hidden, positions)
        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attn.q_proj(normed).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            key = attn.k_proj(normed).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            value = attn.v_proj(normed).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            key_cache = self.keys[index][rows]
            value_cache = self.values[index][rows]
            key_cache.index_copy_(2, slots, key)
            value_cache.index_copy_(2, slots, value)
            out = self._attend(query, key_cache[:, :, :length], value_cache[:, :, :length], mask)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.lm.norm(hidden)

    def _attend(self, query, key, value, mask) -> torch.Tensor:
        if mask is None:  # prefill: plain causal attention
            return F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=self.scaling, enable_gqa=self.groups > 1
            )
        batch, _, seq, dim = query.shape
        if seq == 1 and self.groups > 1:
            # one query token: fold the query heads of each KV head into the sequence axis (no KV repeat)
            folded = query.reshape(batch, self.kv_heads, self.groups, dim)
            out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=self.scaling)
            return out.reshape(batch, self.num_heads, 1, dim)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=self.scaling, enable_gqa=self.groups > 1
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of the allowed tokens (in vocabulary order) for ``hidden`` (..., hidden)."""
        return F.linear(hidden, self.head_weight).float()
