"""Engines turn a GenerationJob into audio: ``fast`` (batched, the default), ``oracle`` (the original
loop, the definition of correct) and ``reference`` (transformers' own generate, a baseline)."""

from __future__ import annotations

from .base import SAMPLES_PER_FRAME, Engine, EngineError, GenerationJob, GenerationResult

__all__ = ["SAMPLES_PER_FRAME", "Engine", "EngineError", "GenerationJob", "GenerationResult", "load_engine"]


def load_engine(settings, path: str | None = None) -> Engine:
    """The engine ``settings.engine`` names (auto: fast), loaded from ``path`` (default ``settings.model``)."""
    if settings.engine == "reference":
        from .reference import ReferenceEngine as engine_class
    elif settings.engine == "oracle":
        from .oracle import OracleEngine as engine_class
    else:
        from .fast import FastEngine as engine_class
    return engine_class.load(settings, path=path)
