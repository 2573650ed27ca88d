"""Where the model comes from at start: a local folder, RunPod's model cache, a network volume, the image, or the hub.

Order (the first that has a ``config.json`` wins):

1. ``local_folder``: ``VV_MODEL`` is an existing folder. Used as given.
2. ``runpod_cache``: RunPod's cached-model store,
   ``/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/<commit>/``: the snapshot of
   ``VV_MODEL_REVISION`` when it is set (a commit, or a branch or tag through ``refs/<name>``), else the one
   ``refs/main`` names when it has a config.json, else the newest that has one.
3. ``network_volume``: a folder on an attached network volume,
   ``/runpod-volume/models/ORG--NAME``, ``/runpod-volume/models/ORG/NAME`` or ``/runpod-volume/models/NAME``.
4. ``baked``: the copy built into the image, ``/app/models/NAME``. It lives outside ``/runpod-volume`` on
   purpose, so a network volume mounted there cannot hide it.
5. ``hub_download``: the Hugging Face cache (``HF_HOME``), filled from the hub when needed: the checkpoint's
   files at ``VV_MODEL_REVISION`` (default: the main branch) are downloaded once, then loaded from the cache.
   Before anything large moves, one request with a short timeout and no retries checks that the hub answers
   and fetches config.json, so an unreachable hub or an original-format repo fails in seconds.

Every source ends as a local folder, loaded with the hub switched off. Before it is returned, its
config.json and the safetensors headers are checked (:func:`vv_worker.checkpoint.quick_problems`), so an
original-format checkpoint, a wrong model type or a truncated shard stops the worker with a message
instead of a traceback from deep inside the load.

A value that looks like a path (``/``, ``./``, ``~`` or more than one ``/``, or ``DIR/NAME`` where ``DIR``
is an existing local folder) is never looked up on the hub: a missing folder fails at once.

Why the volume comes before the image: RunPod's cache and the volume are what the operator set up
for this endpoint (a pinned revision, a fine-tune); the baked copy is the image's fallback. To force
the baked copy, point ``VV_MODEL`` at its folder.

``VV_MODEL_REVISION`` and folders: a folder written by ``scripts/download_model.py`` (or any
``snapshot_download(local_dir=...)``) records the commit it came from. When the revision is a commit hash,
a folder recording another commit is skipped (volume, image) or refused (``VV_MODEL``); when the folder
records nothing, or the revision is a branch or tag name, it cannot be checked and a warning says so.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .checkpoint import (
    CHECKPOINT_PATTERNS,
    CheckpointError,
    fit_problems,
    is_original_format,
    original_format_message,
    quick_problems,
    read_config,
    recorded_commit,
)
from .config import DEFAULT_MODEL, ConfigError

log = logging.getLogger(__name__)

RUNPOD_CACHE_ROOT = Path("/runpod-volume/huggingface-cache/hub")
VOLUME_MODELS_ROOT = Path("/runpod-volume/models")
BAKED_MODELS_ROOT = Path("/app/models")
HUB_TIMEOUT_S = 10.0  # the reachability check; the download itself has no overall limit

Source = Literal["local_folder", "baked", "runpod_cache", "network_volume", "hub_download"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")

TINY_MODEL_HINT = "python scripts/make_tiny_model.py models/tiny, then --model models/tiny or VV_MODEL=models/tiny"


class ProvisionError(ConfigError):
    """The model cannot be found or used; the message says where it looked and what would fix it."""


@dataclass(frozen=True)
class ModelSource:
    path: str  # the local folder the model is loaded from
    source: Source


def on_runpod() -> bool:
    return bool(os.environ.get("RUNPOD_ENDPOINT_ID") or os.environ.get("RUNPOD_POD_ID"))


def _has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def looks_like_path(model: str) -> bool:
    """``model`` is meant as a local path, not a hub repo id (see the module docstring)."""
    if model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model or model.count("/") > 1:
        return True
    parent, _, name = model.partition("/")
    return bool(name) and model != DEFAULT_MODEL and Path(parent).is_dir()


def path_problem(model: str) -> str | None:
    """Why ``model``, meant as a local folder, cannot be used; None when it is a folder or not path-like."""
    folder = Path(model).expanduser()
    if folder.is_dir() or not looks_like_path(model):
        return None
    if folder.exists():
        return f"{folder} is a file, not a checkpoint folder"
    message = f"no such folder {folder}"
    parent = folder.parent
    if parent.is_dir():
        siblings = [item.name for item in parent.iterdir() if item.is_dir()]
        close = difflib.get_close_matches(folder.name, siblings, n=3)
        if close:
            message += " (did you mean " + " or ".join(str(parent / name) for name in close) + "?)"
        if "/" in model and not model.startswith((".", "/", "~")):
            message += f"; it is read as a path because {parent} is a local folder, so it is not looked up on the hub"
    else:
        message += f" ({parent} does not exist either)"
    return message


def revision_matches(folder: Path, revision: str) -> bool | None:
    """Whether ``folder`` holds ``revision``; None when that cannot be told (a branch or tag, or no record)."""
    commit = recorded_commit(folder) if _COMMIT.match(revision) else None
    return None if commit is None else commit.startswith(revision)


def cache_snapshot(model_id: str, cache_root: Path = RUNPOD_CACHE_ROOT, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``model_id`` (at ``revision``) in a hub-style cache that has a config.json, or None."""
    repo = cache_root / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    if revision is not None:
        ref = repo / "refs" / revision
        if ref.is_file():
            revision = ref.read_text(encoding="utf-8").strip()
        if not _COMMIT.match(revision):
            return None
        matches = [folder for folder in snapshots.iterdir() if folder.name.startswith(revision)]
        return matches[0] if len(matches) == 1 and _has_config(matches[0]) else None
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text(encoding="utf-8").strip()
        if _has_config(pinned):
            return pinned
    candidates = [folder for folder in snapshots.iterdir() if folder.is_dir() and _has_config(folder)]
    if not candidates:
        return None
    return max(candidates, key=lambda folder: (folder / "config.json").stat().st_mtime)


def volume_candidates(model_id: str, volume_root: Path = VOLUME_MODELS_ROOT) -> list[Path]:
    """Network-volume folders tried for ``model_id``, in order."""
    name = model_id.rstrip("/").split("/")[-1]
    folders = []
    if "/" in model_id:
        folders += [volume_root / model_id.replace("/", "--"), volume_root / model_id]
    folders.append(volume_root / name)
    return folders


def checked(folder: Path, source: Source, where: str) -> ModelSource:
    """``folder`` as a :class:`ModelSource` once its config and weights pass the quick checks.

    ``where`` names the model in messages (the hub id, or the folder as the user gave it).
    """
    try:
        original = is_original_format(read_config(folder))
    except CheckpointError:
        original = False  # quick_problems reports it
    if original:
        raise ProvisionError(original_format_message(where))
    problems = quick_problems(folder) or fit_problems(folder)
    if problems:
        raise ProvisionError(f"the checkpoint at {folder} cannot be used: " + "; ".join(problems))
    return ModelSource(str(folder), source)


def resolve_model(
    model: str,
    *,
    revision: str | None = None,
    runpod_cache_root: Path = RUNPOD_CACHE_ROOT,
    volume_models_root: Path = VOLUME_MODELS_ROOT,
    baked_root: Path = BAKED_MODELS_ROOT,
) -> ModelSource:
    """Pick where to load ``model`` (a hub repo id or a folder) from; see the module docstring for the order."""
    local = Path(model).expanduser()
    if local.is_dir():
        if revision is not None:
            verdict = revision_matches(local, revision)
            if verdict is False:
                raise ProvisionError(
                    f"VV_MODEL={model!r} holds commit {recorded_commit(local)}, not VV_MODEL_REVISION={revision}"
                )
            if verdict is None:
                log.warning(
                    "model: VV_MODEL_REVISION=%s cannot be checked for the folder %s; using it", revision, local
                )
        log.info("model: using the local folder %s", local)
        return checked(local, "local_folder", model)
    problem = path_problem(model)
    if problem is not None:
        raise ProvisionError(f"VV_MODEL={model!r}: {problem}")

    model_id = model.strip("/")
    tried: list[str] = []

    snapshot = cache_snapshot(model_id, Path(runpod_cache_root), revision)
    tried.append(str(Path(runpod_cache_root) / ("models--" + model_id.replace("/", "--"))))
    if snapshot is not None:
        log.info("model: using RunPod's model cache at %s (fastest start)", snapshot)
        return checked(snapshot, "runpod_cache", model_id)

    folders = [(folder, "network_volume") for folder in volume_candidates(model_id, Path(volume_models_root))]
    folders.append((Path(baked_root) / model_id.split("/")[-1], "baked"))
    for folder, source in folders:
        tried.append(str(folder))
        if not _has_config(folder):
            continue
        if revision is not None:
            verdict = revision_matches(folder, revision)
            if verdict is False:
                log.warning(
                    "model: skipping %s: it holds commit %s, not VV_MODEL_REVISION=%s",
                    folder,
                    recorded_commit(folder),
                    revision,
                )
                continue
            if verdict is None:
                log.warning("model: VV_MODEL_REVISION=%s cannot be checked for %s; using it", revision, folder)
        label = "the network-volume copy" if source == "network_volume" else "the copy baked into the image"
        log.info("model: using %s at %s", label, folder)
        return checked(folder, source, model_id)

    if not _REPO_ID.match(model_id):
        raise ProvisionError(
            f"VV_MODEL={model!r} was not found (looked in: {', '.join(tried)}) and is not a hub repo id "
            "of the form ORG/NAME, so it cannot be downloaded"
        )
    return from_hub(model_id, revision, tried)


def _hub_offline_set() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _fixes(model_id: str) -> str:
    return (
        f"To run without the hub: download it once where the hub is reachable (python scripts/download_model.py "
        f"--repo {model_id} --out models/NAME) and pass the folder with --model PATH or VV_MODEL=PATH; "
        f"or, to try the worker without the real model, build the tiny random-weight one: {TINY_MODEL_HINT}"
    )


def _cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The model's folder in the local Hugging Face cache at ``revision``, without any network call."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache
        return None
    folder = Path(path)
    return folder if _has_config(folder) else None


def _hub_answer_problem(error: Exception, model_id: str, revision: str | None) -> str | None:
    """What the hub's answer means, for errors where it answered; None for errors reaching it."""
    from huggingface_hub import errors

    at = f"{model_id}@{revision}" if revision else model_id
    if isinstance(error, errors.GatedRepoError):
        return (
            f"{model_id} is gated on the hub: accept its terms on huggingface.co and give the worker a token (HF_TOKEN)"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return f"the hub has no revision {revision!r} of {model_id} (VV_MODEL_REVISION)"
    if isinstance(error, errors.RepositoryNotFoundError):
        return f"the hub has no repo {model_id} (or it is private and no token with access is set: HF_TOKEN)"
    if isinstance(error, errors.EntryNotFoundError):
        return f"{at} has no config.json: it is not a model checkpoint"
    if isinstance(error, errors.HfHubHTTPError):
        return f"the hub refused {at}: {error}"
    return None


def from_hub(model_id: str, revision: str | None, tried: list[str] | None = None) -> ModelSource:
    """The model's folder in the Hugging Face cache, downloading what is missing; fails in seconds offline."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download

    at = f"{model_id}@{revision}" if revision else model_id
    unreachable = None
    if _hub_offline_set():
        unreachable = "HF_HUB_OFFLINE is set"
    else:
        try:
            get_hf_file_metadata(hf_hub_url(model_id, "config.json", revision=revision), timeout=HUB_TIMEOUT_S)
        except Exception as error:  # huggingface_hub raises its own and httpx's error types
            problem = _hub_answer_problem(error, model_id, revision)
            if problem is not None:
                raise ProvisionError(problem) from None
            unreachable = f"the hub cannot be reached: {type(error).__name__}: {error}"

    if unreachable is not None:
        cached = _cached_snapshot(model_id, revision)
        if cached is not None:
            log.warning("model: %s; using the copy of %s in the Hugging Face cache at %s", unreachable, at, cached)
            return checked(cached, "hub_download", model_id)
        looked = ""
        if on_runpod() and tried:
            looked = f" It was not found in: {', '.join(tried)}."
        if model_id != DEFAULT_MODEL:
            looked += f" If {model_id!r} is meant as a local folder: there is no such folder in {Path.cwd()}."
        raise ProvisionError(
            f"the model {at} is not in the local Hugging Face cache and {unreachable}.{looked} {_fixes(model_id)}"
        )

    try:
        config_path = hf_hub_download(model_id, "config.json", revision=revision, etag_timeout=HUB_TIMEOUT_S)
        config = read_config(Path(config_path).parent)
    except CheckpointError as error:
        raise ProvisionError(f"{at}: {error}") from None
    except Exception as error:
        raise ProvisionError(f"fetching config.json of {at} failed: {type(error).__name__}: {error}") from None
    if is_original_format(config):
        raise ProvisionError(original_format_message(model_id))

    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    if on_runpod():
        log.warning(
            "model: %s is not cached, on a volume or baked into the image (looked in: %s); downloading it from "
            "the Hugging Face hub into %s. This is the slowest start: bake the model into the image or enable "
            "RunPod's model cache for this endpoint.",
            at,
            ", ".join(tried or []),
            cache,
        )
    else:
        log.warning("model: fetching %s from the Hugging Face hub into %s (files already cached are reused)", at, cache)
    try:
        path = snapshot_download(
            model_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS, etag_timeout=HUB_TIMEOUT_S
        )
    except Exception as error:
        raise ProvisionError(f"downloading {at} failed: {type(error).__name__}: {error}") from None
    return checked(Path(path), "hub_download", model_id)
