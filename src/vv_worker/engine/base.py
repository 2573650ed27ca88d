"""What every engine takes and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from ..prompt import ScriptLine

SAMPLES_PER_FRAME = 3200  # 24 kHz / 7.5 frames per second
FinishReason = Literal["end_of_speech", "frame_cap"]
ProgressCallback = Callable[[int, int], None]  # (frames done, frame cap)


class EngineError(RuntimeError):
    """Generation failed in a way the caller should report as a job error."""


class JobStopped(EngineError):
    """Generation was stopped early by the job's ``should_stop`` (time limit or cancellation)."""


@dataclass
class GenerationJob:
    """A validated request, reduced to what the model needs."""

    script: list[ScriptLine]
    voices: dict[int, np.ndarray]  # speaker -> float32 mono samples at 24 kHz
    seed: int
    cfg_scale: float
    diffusion_steps: int
    max_frames: int
    temperature: float | None = None
    # checked between generation steps; returns why the job must stop (time limit, cancellation) or None
    should_stop: Callable[[], str | None] | None = None


@dataclass
class GenerationResult:
    audio: np.ndarray  # float32 mono at 24 kHz
    frames: int
    finish_reason: FinishReason
    generation_seconds: float
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    model_id: str
    device: str
    dtype: str

    def generate(self, job: GenerationJob, on_progress: ProgressCallback | None = None) -> GenerationResult: ...
