"""Is a folder a complete transformers-format VibeVoice checkpoint? Checked offline, without loading weights.

Used by ``scripts/download_model.py`` after a download and by the start-up fitness checks. It
reads only small files and the safetensors headers, so it takes well under a second even for
the 7B checkpoint.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

INDEX_NAME = "model.safetensors.index.json"
SINGLE_WEIGHTS_NAME = "model.safetensors"
EXPECTED_MODEL_TYPE = "vibevoice"

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


def _shard_problems(folder: Path) -> list[str]:
    """Every referenced shard present, non-empty, with a readable header holding the tensors the index names."""
    from safetensors import safe_open

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
    problems: list[str] = []
    if not (folder / "config.json").is_file():
        problems.append("config.json is missing")
    else:
        from transformers import AutoConfig

        with _hub_offline():
            try:
                config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            except Exception as error:
                problems.append(f"config.json does not load ({type(error).__name__}: {error})")
            else:
                if getattr(config, "model_type", None) != EXPECTED_MODEL_TYPE:
                    problems.append(
                        f"config.json has model_type {getattr(config, 'model_type', None)!r}, "
                        f"expected {EXPECTED_MODEL_TYPE!r} (a transformers-format VibeVoice checkpoint)"
                    )
            if check_processor and not problems:
                from transformers import AutoProcessor

                try:
                    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
                except Exception as error:
                    problems.append(f"the processor does not load ({type(error).__name__}: {error})")
                else:
                    if "VibeVoice" not in type(processor).__name__:
                        problems.append(f"the processor is a {type(processor).__name__}, not a VibeVoice processor")
    problems.extend(_shard_problems(folder))
    return problems


def verify_checkpoint(folder: str | os.PathLike, *, check_processor: bool = True) -> None:
    """Raise :class:`CheckpointError` listing every problem, or return if the checkpoint is complete."""
    problems = checkpoint_problems(folder, check_processor=check_processor)
    if problems:
        raise CheckpointError(f"{folder} is not a complete VibeVoice checkpoint: " + "; ".join(problems))
