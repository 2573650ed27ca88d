"""Hooks into transformers' ``generate``: temperature sampling and frame progress."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from .base import ProgressCallback


class AllowedTokenSampler(LogitsProcessor):
    """Sample the next token at ``temperature`` among the tokens VibeVoice may emit.

    Stock VibeVoice generation always takes the argmax. This processor draws a token from
    softmax(logits / temperature) restricted to ``allowed_ids`` and returns scores where only
    that token is finite, so the argmax that follows selects it.
    """

    def __init__(self, allowed_ids: list[int], temperature: float, generator: torch.Generator):
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.allowed_ids = torch.tensor(sorted(set(allowed_ids)), dtype=torch.long)
        self.temperature = temperature
        self.generator = generator

    def pick(self, allowed_scores: torch.Tensor) -> torch.Tensor:
        """Draw among the allowed tokens; ``allowed_scores`` is (batch, n_allowed) in id order.

        Returns the drawn column indices, (batch, 1), on the generator's device. In float64 (every
        temperature the schema accepts is representable there) and with the best score subtracted
        before dividing, a tiny temperature gives the others -inf (probability 0) instead of NaN:
        near zero this is argmax, as it should be.
        """
        scores = allowed_scores.double()
        scaled = (scores - scores.max(dim=-1, keepdim=True).values) / self.temperature
        probs = torch.softmax(scaled, dim=-1)
        return torch.multinomial(probs.to(self.generator.device), 1, generator=self.generator)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed_ids.to(scores.device)
        picks = self.pick(scores[:, allowed]).to(scores.device)
        chosen = allowed[picks]  # (batch, 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


class FrameProgress(BaseStreamer):
    """Counts generated audio frames and reports them; ``generate`` calls ``put`` once per step."""

    def __init__(self, audio_token_id: int, frame_cap: int, callback: ProgressCallback):
        self.audio_token_id = audio_token_id
        self.frame_cap = frame_cap
        self.callback = callback
        self.frames = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        new = int((value == self.audio_token_id).sum())
        if new:
            self.frames += new
            self.callback(self.frames, self.frame_cap)

    def end(self) -> None:
        pass


class StopWhen(StoppingCriteria):
    """Ends generation after the current step once ``should_stop`` returns a reason, and keeps the reason."""

    def __init__(self, should_stop: Callable[[], str | None]):
        self.should_stop = should_stop
        self.reason: str | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.reason is None:
            self.reason = self.should_stop()
        return torch.full((input_ids.shape[0],), self.reason is not None, dtype=torch.bool, device=input_ids.device)
