"""Start-up fitness checks, registered with the runpod SDK (``runpod.serverless.register_fitness_check``).

The SDK runs every registered check once, in order, inside ``runpod.serverless.start()`` on RunPod
(never in the local modes ``--test_input`` / ``--rp_serve_api``). A check that raises marks the
worker unhealthy: the SDK logs the check's name and message, reports it to RunPod, and exits the
process, so RunPod replaces the worker instead of sending it jobs. runpod >= 1.12 also registers
its own GPU memory test when it sees a GPU.

Each check here raises :class:`FitnessError` with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)


class FitnessError(RuntimeError):
    """A start-up check failed; the worker must not take jobs."""


# ----------------------------------------------------------------------------- model


def check_model_loadable(load_model: Callable[[], object]) -> None:
    """Call ``load_model`` (the caller's loader, idempotent) and fail if it raises or returns None."""
    try:
        loaded = load_model()
    except Exception as error:
        raise FitnessError(f"the model does not load: {type(error).__name__}: {error}") from error
    if loaded is None:
        raise FitnessError("the model does not load: the loader returned nothing")


# ------------------------------------------------------------------------------- GPU


def gpu_required(settings: Settings, *, on_runpod: bool | None = None) -> str | None:
    """Why this configuration needs a GPU, or None when it can run on the CPU.

    ``VV_DEVICE=cuda[:N]``, a half-precision ``VV_DTYPE`` and ``flash_attention_2`` all need one. With
    ``VV_DEVICE=auto`` on RunPod (``RUNPOD_ENDPOINT_ID`` set; ``on_runpod`` overrides it), a missing GPU would
    silently fall back to the CPU, where the 7B model is unusably slow, so it counts as needing one too.
    """
    if settings.device.startswith("cuda"):
        return f"VV_DEVICE={settings.device}"
    if settings.device == "cpu":
        return None
    if settings.dtype in ("bfloat16", "float16"):
        return f"VV_DTYPE={settings.dtype}"
    if settings.attn_implementation == "flash_attention_2":
        return "VV_ATTN_IMPLEMENTATION=flash_attention_2"
    if on_runpod is None:
        on_runpod = bool(settings.runpod_endpoint_id)
    if on_runpod:
        return "VV_DEVICE=auto on a RunPod endpoint"
    return None


def check_gpu(settings: Settings, *, on_runpod: bool | None = None) -> None:
    """torch sees a CUDA device (the configured index, when one is given) if the configuration needs one."""
    reason = gpu_required(settings, on_runpod=on_runpod)
    if reason is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise FitnessError(
            f"{reason} needs a CUDA GPU, but torch sees none (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); check the endpoint's GPU type and the image's CUDA version against the driver"
        )
    count = torch.cuda.device_count()
    if settings.device.startswith("cuda:"):
        index = int(settings.device.split(":", 1)[1])
        if index >= count:
            raise FitnessError(f"VV_DEVICE={settings.device} but torch sees only {count} GPU(s)")


# ---------------------------------------------------------------------------- voices


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class VoicesReport:
    folder: Path
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def inspect_voices(folder: str | os.PathLike) -> VoicesReport:
    """Compare the voice folder with its manifest: files present and matching, missing, or altered."""
    folder = Path(folder)
    report = VoicesReport(folder)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return report
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["voices"]
    except (ValueError, KeyError, TypeError) as error:
        raise FitnessError(f"the voice manifest {manifest} is not valid: {type(error).__name__}: {error}") from None
    for entry in entries:
        path = folder / entry["file"]
        label = f"{entry['name']} ({entry['file']})"
        if not path.is_file():
            report.missing.append(label)
        elif sha256_file(path) != entry["sha256"].lower():
            report.mismatched.append(label)
        else:
            report.ok.append(label)
    return report


def check_voices(folder: str | os.PathLike, *, require_all: bool = False) -> VoicesReport:
    """Every voice file present matches its manifest sha256; missing ones are reported (fatal if ``require_all``)."""
    report = inspect_voices(folder)
    if report.mismatched:
        raise FitnessError(
            f"voice files in {report.folder} do not match the manifest's sha256: {', '.join(report.mismatched)}; "
            "run scripts/fetch_voices.py to download them again"
        )
    if report.missing:
        message = (
            f"voices listed in {report.folder}/manifest.json but not present: {', '.join(report.missing)}; "
            "run scripts/fetch_voices.py"
        )
        if require_all:
            raise FitnessError(message)
        log.warning("%s (those voices are unavailable)", message)
    return report


# ---------------------------------------------------------------------- registration


def register_fitness_checks(
    settings: Settings,
    load_model: Callable[[], object] | None = None,
    *,
    require_all_voices: bool = False,
    on_runpod: bool | None = None,
    register: Callable[[Callable], Callable] | None = None,
) -> list[Callable[[], None]]:
    """Register the worker's checks with the runpod SDK and return them, in the order they run.

    - ``vv_gpu_visible``: a GPU is visible when the configuration needs one (first: cheapest, most common).
    - ``vv_voices_match_manifest``: voice files match their sha256.
    - ``vv_model_loadable``: when ``load_model`` is given, it loads (or returns the already loaded) model.

    ``register`` defaults to ``runpod.serverless.register_fitness_check``; tests pass their own.
    """
    if register is None:
        import runpod

        register = runpod.serverless.register_fitness_check

    def vv_gpu_visible() -> None:
        check_gpu(settings, on_runpod=on_runpod)

    def vv_voices_match_manifest() -> None:
        check_voices(settings.voices_dir, require_all=require_all_voices)

    def vv_model_loadable() -> None:
        check_model_loadable(load_model)

    checks: list[Callable[[], None]] = [vv_gpu_visible, vv_voices_match_manifest]
    if load_model is not None:
        checks.append(vv_model_loadable)
    for check in checks:
        register(check)
    return checks
