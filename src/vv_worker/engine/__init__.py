"""Engines turn a GenerationJob into audio; ``reference`` is transformers' own generate."""

from .base import SAMPLES_PER_FRAME, EngineError, GenerationJob, GenerationResult

__all__ = ["SAMPLES_PER_FRAME", "EngineError", "GenerationJob", "GenerationResult"]
