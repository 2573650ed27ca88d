"""Where the model comes from at start: a local folder, RunPod's model cache, a network volume, the image, or the hub.

Order (the first that has a ``config.json`` wins):

1. ``local_folder``: ``VV_MODEL`` is an existing folder. Used as given, offline.
2. ``runpod_cache``: RunPod's cached-model store,
   ``/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/<rev>/`` (the snapshot named by
   ``refs/main`` when it has a config.json, else the newest snapshot that has one). Offline.
3. ``network_volume``: a folder on an attached network volume,
   ``/runpod-volume/models/ORG--NAME``, ``/runpod-volume/models/ORG/NAME`` or ``/runpod-volume/models/NAME``.
   Offline.
4. ``baked``: the copy built into the image, ``/app/models/NAME``. It lives outside ``/runpod-volume`` on
   purpose, so a network volume mounted there cannot hide it. Offline.
5. ``hub_download``: nothing local; transformers downloads the repo into the Hugging Face cache
   (``HF_HOME``) at start. The slowest path (about 19 GB for the 7B model); a warning says so.

Why the volume comes before the image: RunPod's cache and the volume are what the operator set up
for this endpoint (a pinned revision, a fine-tune); the baked copy is the image's fallback. To force
the baked copy, point ``VV_MODEL`` at its folder.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

RUNPOD_CACHE_ROOT = Path("/runpod-volume/huggingface-cache/hub")
VOLUME_MODELS_ROOT = Path("/runpod-volume/models")
BAKED_MODELS_ROOT = Path("/app/models")

Source = Literal["local_folder", "baked", "runpod_cache", "network_volume", "hub_download"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ProvisionError(RuntimeError):
    """The model cannot be found anywhere and cannot be downloaded; the message says where it looked."""


@dataclass(frozen=True)
class ModelSource:
    path_or_id: str  # a local folder, or the hub repo id for hub_download
    source: Source
    offline: bool  # True: load with HF_HUB_OFFLINE=1 and local_files_only=True


def _has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~", ".\\")) or model.count("/") > 1


def cache_snapshot(model_id: str, cache_root: Path = RUNPOD_CACHE_ROOT) -> Path | None:
    """The snapshot folder of ``model_id`` in a hub-style cache that has a config.json, or None."""
    repo = cache_root / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
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


def resolve_model(
    model: str,
    *,
    runpod_cache_root: Path = RUNPOD_CACHE_ROOT,
    volume_models_root: Path = VOLUME_MODELS_ROOT,
    baked_root: Path = BAKED_MODELS_ROOT,
) -> ModelSource:
    """Pick where to load ``model`` (a hub repo id or a folder) from; see the module docstring for the order."""
    local = Path(model).expanduser()
    if local.is_dir():
        source = ModelSource(str(local), "local_folder", True)
        log.info("model: using the local folder %s", local)
        return source
    if _looks_like_path(model):
        raise ProvisionError(f"VV_MODEL={model!r} looks like a folder but does not exist")

    model_id = model.strip("/")
    tried: list[str] = []

    snapshot = cache_snapshot(model_id, Path(runpod_cache_root))
    tried.append(str(Path(runpod_cache_root) / ("models--" + model_id.replace("/", "--"))))
    if snapshot is not None:
        log.info("model: using RunPod's model cache at %s (fastest start)", snapshot)
        return ModelSource(str(snapshot), "runpod_cache", True)

    for folder in volume_candidates(model_id, Path(volume_models_root)):
        tried.append(str(folder))
        if _has_config(folder):
            log.info("model: using the network-volume copy at %s", folder)
            return ModelSource(str(folder), "network_volume", True)

    baked = Path(baked_root) / model_id.split("/")[-1]
    tried.append(str(baked))
    if _has_config(baked):
        log.info("model: using the copy baked into the image at %s", baked)
        return ModelSource(str(baked), "baked", True)

    if not _REPO_ID.match(model_id):
        raise ProvisionError(
            f"VV_MODEL={model!r} was not found (looked in: {', '.join(tried)}) and is not a hub repo id "
            "of the form ORG/NAME, so it cannot be downloaded"
        )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    log.warning(
        "model: %s is not cached, on a volume or baked into the image (looked in: %s); downloading it from "
        "the Hugging Face hub into %s. This is the slowest start: bake the model into the image or enable "
        "RunPod's model cache for this endpoint.",
        model_id,
        ", ".join(tried),
        cache,
    )
    return ModelSource(model_id, "hub_download", False)
