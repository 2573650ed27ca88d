"""Is a folder a complete transformers-format VibeVoice checkpoint? Checked offline, without loading weights.

Used by the model provisioning before every load (:func:`quick_problems`: config.json and the
safetensors headers), by ``scripts/download_model.py`` after a download and by the start-up fitness
checks (:func:`checkpoint_problems`, which also loads the config and processor). Only small files
and the safetensors headers are read, so it takes well under a second even for the 7B checkpoint.

An original-format checkpoint (Microsoft's own layout, as in ``microsoft/VibeVoice-1.5B`` or
``aoi-ot/VibeVoice-Large``) is recognised by its config.json and reported with the command that
converts it (``scripts/convert_checkpoint.py``).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

INDEX_NAME = "model.safetensors.index.json"
SINGLE_WEIGHTS_NAME = "model.safetensors"
EXPECTED_MODEL_TYPE = "vibevoice"
# Sub-configs of the original layout's config.json; a transformers-format config has text_config instead.
ORIGINAL_CONFIG_KEYS = ("decoder_config", "acoustic_tokenizer_config")
CONVERT_SCRIPT = "scripts/convert_checkpoint.py"
# where snapshot_download(local_dir=...) records, per file, the commit it was downloaded from
_DOWNLOAD_RECORD = Path(".cache") / "huggingface" / "download" / "config.json.metadata"

# What a transformers VibeVoice checkpoint needs: config, processor and tokenizer files (json, txt),
# the chat template, the safetensors weights and their index. Nothing else is downloaded.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


class CheckpointError(RuntimeError):
    """The folder is not a usable checkpoint; the message lists every problem found."""


@contextmanager
def _hub_offline():
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_original_format(config: object) -> bool:
    """``config`` (a parsed config.json) is the original VibeVoice layout, which transformers cannot load."""
    return (
        isinstance(config, dict) and "text_config" not in config and any(key in config for key in ORIGINAL_CONFIG_KEYS)
    )


def original_format_message(where: str) -> str:
    """What an original-format checkpoint is and the commands that make it usable."""
    name = where.rstrip("/").split("/")[-1] or "model"
    return (
        f"{where} is an original-format VibeVoice checkpoint (its config.json has decoder_config and "
        "acoustic_tokenizer_config, no text_config: the layout of microsoft/VibeVoice-1.5B and "
        "aoi-ot/VibeVoice-Large), which transformers cannot load. Convert it once with "
        f"`python {CONVERT_SCRIPT} {where} models/{name}-hf`, then use --model models/{name}-hf or "
        f"VV_MODEL=models/{name}-hf; or use a transformers-format repo such as vibevoice/VibeVoice-7B-hf"
    )


def recorded_commit(folder: str | os.PathLike) -> str | None:
    """The hub commit ``folder`` was downloaded from, when a download recorded it."""
    record = Path(folder) / _DOWNLOAD_RECORD
    try:
        first = record.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return first if re.fullmatch(r"[0-9a-f]{40}", first) else None


def read_config(folder: str | os.PathLike) -> dict:
    """The parsed config.json of ``folder``; raises CheckpointError when it is missing or not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"config.json is missing from {folder}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({type(error).__name__}: {error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return config


def quick_problems(folder: str | os.PathLike) -> list[str]:
    """The checks run before every load: config.json as plain JSON and the weights' headers."""
    folder = Path(folder)
    try:
        config = read_config(folder)
    except CheckpointError as error:
        return [str(error), *weight_problems(folder)]
    if is_original_format(config):
        return [original_format_message(str(folder))]  # its weights use other names: nothing more to check
    problems = []
    if config.get("model_type") != EXPECTED_MODEL_TYPE:
        problems.append(
            f"config.json has model_type {config.get('model_type')!r}, expected {EXPECTED_MODEL_TYPE!r} "
            "(a transformers-format VibeVoice checkpoint)"
        )
    return problems + weight_problems(folder)


def fit_problems(folder: str | os.PathLike) -> list[str]:
    """The weights' names and shapes against the model that config.json describes (built on the meta device).

    transformers loads a checkpoint whose tensors are missing or of another shape than the config implies,
    and only logs that it initialised those randomly; this check refuses such a folder instead.
    Tensors the model does not have are left to transformers, which ignores them.
    """
    import torch
    from transformers import AutoConfig, VibeVoiceForConditionalGeneration

    folder = Path(folder)
    with _hub_offline():
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as error:
            return [f"config.json does not load ({type(error).__name__}: {error})"]
    try:
        with torch.device("meta"):
            model = VibeVoiceForConditionalGeneration(config)
    except Exception as error:
        return [f"config.json does not describe a buildable VibeVoice model ({type(error).__name__}: {error})"]
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    found = _tensor_shapes(folder)
    problems = []
    missing = sorted(set(expected) - set(found) - tied)
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are absent from the weights (e.g. {missing[0]})")
    wrong = sorted(name for name in set(expected) & set(found) if expected[name] != found[name])
    if wrong:
        name = wrong[0]
        problems.append(
            f"{len(wrong)} tensor(s) have another shape than config.json implies "
            f"(e.g. {name}: {list(found[name])} in the weights, {list(expected[name])} from the config)"
        )
    return problems


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the folder's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            shapes.update((name, tuple(handle.get_slice(name).get_shape())) for name in names)
    return shapes


def weight_problems(folder: str | os.PathLike) -> list[str]:
    """Every referenced shard present, non-empty, with a readable header holding the tensors the index names."""
    from safetensors import safe_open

    folder = Path(folder)

    problems: list[str] = []
    index_path = folder / INDEX_NAME
    expected: dict[str, set[str]] = {}
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            return [f"{INDEX_NAME} is not a valid safetensors index ({type(error).__name__}: {error})"]
        if not isinstance(weight_map, dict) or not weight_map:
            return [f"{INDEX_NAME} has an empty weight_map"]
        for tensor, shard in weight_map.items():
            expected.setdefault(shard, set()).add(tensor)
    elif (folder / SINGLE_WEIGHTS_NAME).is_file():
        expected[SINGLE_WEIGHTS_NAME] = set()
    else:
        return [f"no weights: neither {INDEX_NAME} nor {SINGLE_WEIGHTS_NAME} is present"]

    for shard in sorted(expected):
        path = folder / shard
        if Path(shard).name != shard:
            problems.append(f"the index names a shard outside the folder: {shard!r}")
            continue
        if not path.is_file():
            problems.append(f"missing shard {shard}")
            continue
        if path.stat().st_size == 0:
            problems.append(f"empty shard {shard} (0 bytes)")
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                present = set(handle.keys())
        except Exception as error:  # safetensors raises its own error types
            problems.append(f"unreadable or truncated shard {shard}: {error}")
            continue
        missing = expected[shard] - present
        if missing:
            sample = ", ".join(sorted(missing)[:3])
            problems.append(f"shard {shard} lacks {len(missing)} tensor(s) the index names (e.g. {sample})")
        if not present:
            problems.append(f"shard {shard} holds no tensors")
    return problems


def checkpoint_problems(folder: str | os.PathLike, *, check_processor: bool = True) -> list[str]:
    """Everything wrong with ``folder`` as a VibeVoice checkpoint; an empty list means it is usable."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = quick_problems(folder) or fit_problems(folder)
    if problems or not check_processor:
        return problems
    from transformers import AutoProcessor

    with _hub_offline():
        try:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception as error:
            return [f"the processor does not load ({type(error).__name__}: {error})"]
    if "VibeVoice" not in type(processor).__name__:
        return [f"the processor is a {type(processor).__name__}, not a VibeVoice processor"]
    return []


def verify_checkpoint(folder: str | os.PathLike, *, check_processor: bool = True) -> None:
    """Raise :class:`CheckpointError` listing every problem, or return if the checkpoint is complete."""
    problems = checkpoint_problems(folder, check_processor=check_processor)
    if problems:
        raise CheckpointError(f"{folder} is not a complete VibeVoice checkpoint: " + "; ".join(problems))
