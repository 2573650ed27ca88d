"""Worker settings from environment variables, validated once at start: the only place the worker reads them.

``VV_*`` variables are the worker's own; a few standard ones (RunPod's bucket settings, ``RUNPOD_ENDPOINT_ID``)
are read here too, by their usual names. A bad setting raises :class:`ConfigError` with the variable's name,
so the worker stops before it loads anything instead of failing on the first job.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import limits

ENV_PREFIX = "VV_"
DEFAULT_MODEL = "vibevoice/VibeVoice-7B-hf"
DEFAULT_VOICE = "maya"


class ConfigError(RuntimeError):
    """A setting is invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Every knob of the worker. Field ``x`` is read from ``VV_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, populate_by_name=True
    )

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Hub repo id or local folder of the checkpoint")
    model_revision: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        pattern=r"^[\w.\-/]+$",
        description="Hub branch, tag or commit of VV_MODEL (a commit makes downloads reproducible)",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    engine: Literal["auto", "fast", "reference", "oracle"] = Field(
        "auto",
        description="fast: batched decode loop; reference: transformers' generate; "
        "oracle: the original loop, one request at a time; auto: fast",
    )
    max_batch: int | None = Field(
        None, ge=1, le=64, description="Requests the fast engine steps together (unset: 8 on a GPU, 4 on the CPU)"
    )
    streaming: bool = Field(False, description="Make the RunPod handler a generator that can stream audio")
    cpu_threads: str = Field(
        "auto", pattern=r"^(auto|[1-9][0-9]{0,2})$", description="torch CPU threads: N, or auto (see cpu_thread_count)"
    )

    cfg_scale: limits.CFG_SCALE.annotated() = Field(1.3, description="Default guidance scale")
    diffusion_steps: limits.DIFFUSION_STEPS.annotated() = Field(10, description="Default diffusion steps per frame")

    max_text_chars: int = Field(
        limits.DEFAULT_MAX_TEXT_CHARS, ge=1, le=200_000, description="Longest accepted text, in characters"
    )
    max_text_tokens: int = Field(
        limits.DEFAULT_MAX_TEXT_TOKENS,
        ge=1,
        le=100_000,
        description="Longest accepted text, in tokens of the checkpoint's tokenizer (emoji and some scripts "
        "take several tokens per character)",
    )
    frames_per_char: float = Field(
        1.0, gt=0, le=10, allow_inf_nan=False, description="Generation cap: frames allowed per text character"
    )
    extra_frames: int = Field(15, ge=0, le=10_000, description="Generation cap: frames added to every request")
    max_frames: int = Field(6000, ge=1, le=100_000, description="Generation cap: hard ceiling (7.5 frames/s)")

    voices_dir: Path = Field(Path("voices"), description="Folder holding the voice library manifest and audio")
    default_voice: str = Field(
        DEFAULT_VOICE,
        min_length=1,
        description="Library voice used when a request names none; when left at its default and that voice's "
        "recording is absent, the first available voice",
    )
    voice_store_dir: Path = Field(
        Path("registered-voices"),
        description="Folder for registered voices when no RunPod network volume is mounted (then the volume's "
        "vv-worker/voices is used)",
    )
    max_registered_voices: int = Field(
        limits.DEFAULT_MAX_REGISTERED_VOICES, ge=1, le=10_000, description="Most voices the store may hold"
    )
    url_timeout_s: float = Field(15.0, gt=0, le=300, allow_inf_nan=False, description="reference_audio_url timeout")
    url_max_bytes: int = Field(20_000_000, ge=1024, le=500_000_000, description="reference_audio_url size cap")
    reference_min_s: float = Field(1.0, gt=0, le=600, allow_inf_nan=False, description="Shortest voice after trim")
    reference_max_s: float = Field(60.0, gt=0, le=600, allow_inf_nan=False, description="Longest voice after trim")

    job_timeout: float = Field(
        900.0, gt=0, le=86_400, allow_inf_nan=False, description="Seconds a job may run before it is ended"
    )
    max_inline_bytes: int = Field(
        7_000_000, ge=1024, le=100_000_000, description="Larger encoded audio is uploaded to the bucket instead"
    )
    bucket_name: str | None = Field(None, description="Bucket for uploads (BUCKET_* variables hold the endpoint)")
    # RunPod's standard bucket settings, by their own names; the upload gets them from here
    bucket_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("BUCKET_ENDPOINT_URL"))
    bucket_access_key_id: str | None = Field(None, validation_alias=AliasChoices("BUCKET_ACCESS_KEY_ID"))
    bucket_secret_access_key: SecretStr | None = Field(None, validation_alias=AliasChoices("BUCKET_SECRET_ACCESS_KEY"))
    runpod_endpoint_id: str | None = Field(
        None, validation_alias=AliasChoices("RUNPOD_ENDPOINT_ID"), description="Set by RunPod on its workers"
    )

    @model_validator(mode="after")
    def _reference_bounds_ordered(self) -> Settings:
        if self.reference_min_s > self.reference_max_s:
            raise ValueError(
                f"VV_REFERENCE_MIN_S ({self.reference_min_s}) is above VV_REFERENCE_MAX_S ({self.reference_max_s})"
            )
        return self

    @property
    def default_voice_required(self) -> bool:
        """True when VV_DEFAULT_VOICE was set: its voice must then be in the library (else the first available)."""
        return "default_voice" in self.model_fields_set

    def bucket_credentials(self) -> dict[str, str] | None:
        """The runpod SDK's ``bucket_creds`` for an upload, or None when a BUCKET_* setting is missing."""
        if not (self.bucket_endpoint_url and self.bucket_access_key_id and self.bucket_secret_access_key):
            return None
        return {
            "endpointUrl": self.bucket_endpoint_url,
            "accessId": self.bucket_access_key_id,
            "accessSecret": self.bucket_secret_access_key.get_secret_value(),
        }

    def missing_bucket_variables(self) -> list[str]:
        values = {
            "BUCKET_ENDPOINT_URL": self.bucket_endpoint_url,
            "BUCKET_ACCESS_KEY_ID": self.bucket_access_key_id,
            "BUCKET_SECRET_ACCESS_KEY": self.bucket_secret_access_key,
        }
        return [name for name, value in values.items() if not value]


@dataclass(frozen=True)
class Runtime:
    """Concrete choices derived from the settings and the machine: no 'auto' left."""

    device: str
    dtype: str
    attn_implementation: str


def resolve_runtime(settings: Settings) -> Runtime:
    """Turn the ``auto`` values into concrete ones for this machine."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{ENV_PREFIX}DEVICE={settings.device} but no CUDA device is visible to torch")

    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    elif device == "cpu" and dtype != "float32":
        raise ConfigError(f"{ENV_PREFIX}DTYPE={dtype} is not supported on the CPU; use float32 or auto")

    attn = settings.attn_implementation
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if attn == "auto":
        attn = "flash_attention_2" if device.startswith("cuda") and has_flash and dtype != "float32" else "sdpa"
    elif attn == "flash_attention_2" and not (device.startswith("cuda") and has_flash and dtype != "float32"):
        raise ConfigError(
            f"{ENV_PREFIX}ATTN_IMPLEMENTATION=flash_attention_2 needs a CUDA device, the flash_attn package "
            "and dtype bfloat16 or float16; use sdpa or auto"
        )
    return Runtime(device=device, dtype=dtype, attn_implementation=attn)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def cpu_thread_count(setting: str) -> int:
    """``VV_CPU_THREADS``: a number as given; ``auto``: half the usable CPUs, at least 1, at most 8.

    Half, because torch's default (every core) let spinning OpenMP threads fight the rest of a busy
    machine: on a shared 2-core machine one tiny-model request took 0.7-1.4 s with 1 thread and
    7-15 s with 2 (README, Configuration).
    """
    return int(setting) if setting != "auto" else max(1, min(8, usable_cpus() // 2))


def apply_cpu_threads(settings: Settings) -> int:
    """Set torch's CPU thread count from the settings, before the model loads; return it."""
    import torch

    threads = cpu_thread_count(settings.cpu_threads)
    torch.set_num_threads(threads)
    return threads


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"  # aliases are full variable names
        if not item["loc"]:  # a check across fields names its variables itself
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        value = item.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"{name}: {item['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
