#!/usr/bin/env python
"""Convert an original-format VibeVoice checkpoint into a transformers-format folder that VV_MODEL can load.

    python scripts/convert_checkpoint.py SRC OUT [--tokenizer PATH_OR_ID] [--revision REV]

SRC is a local folder or a hub repo id in Microsoft's original layout (config.json with
``decoder_config``, ``acoustic_tokenizer_config``, ``semantic_tokenizer_config`` and
``diffusion_head_config``): ``microsoft/VibeVoice-1.5B``, ``aoi-ot/VibeVoice-Large`` (7B) and
fine-tunes saved by the original code. OUT is a new folder; it then holds config.json,
generation_config.json, the processor (Qwen2.5 tokenizer, feature extractor, chat template) and the
weights, renamed to transformers' names, in as many shards as SRC had.

The weights are renamed, never changed: tensors keep their values and dtype. Before anything is
written, every tensor name of SRC must match exactly one rule of ``RULES`` and the renamed set must
equal, name for name and shape for shape, what ``VibeVoiceForConditionalGeneration`` expects for the
converted config (built on the meta device, no memory). Shards are converted one at a time, so
memory use stays near the largest shard. A model whose config ties the LM head to the embeddings
(1.5B) gets no ``lm_head.weight``: transformers ties it on load, as the original code does.

The tokenizer is Qwen2.5's: ``--tokenizer`` (a local folder or hub id) or, by default, the name the
checkpoint's preprocessor_config.json records (``language_model_pretrained_name``), else
``Qwen/Qwen2.5-1.5B`` or ``Qwen/Qwen2.5-7B`` from the LM's size. Exit status 0 when OUT is a complete
checkpoint, 1 otherwise, with the reason.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

# --------------------------------------------------------------------------------------- weight names
# (original name, transformers name). <N> and <J> are layer indices (<N-1>: one less, because the
# original's layer 0 of each tokenizer tower is the transformers "stem"), <*> is the rest of the name.
# The first rule that matches wins, so the stem (index 0) rules come before the general ones.
_TOWER_RULES = [
    ("downsample_layers.0.0.conv.conv.<*>", "stem.conv.conv.<*>"),
    ("downsample_layers.<N>.0.conv.conv.<*>", "conv_layers.<N-1>.conv.conv.<*>"),
    ("upsample_layers.0.0.conv.conv.<*>", "stem.conv.conv.<*>"),
    ("upsample_layers.<N>.0.convtr.convtr.<*>", "conv_layers.<N-1>.convtr.convtr.<*>"),
    ("stages.0.<J>.mixer.conv.conv.conv.<*>", "stem.stage.<J>.mixer.conv.<*>"),
    ("stages.0.<J>.<*>", "stem.stage.<J>.<*>"),  # norm, ffn_norm, ffn.linear1/2, gamma, ffn_gamma
    ("stages.<N>.<J>.mixer.conv.conv.conv.<*>", "conv_layers.<N-1>.stage.<J>.mixer.conv.<*>"),
    ("stages.<N>.<J>.<*>", "conv_layers.<N-1>.stage.<J>.<*>"),
    ("head.conv.conv.<*>", "head.conv.<*>"),
]
_TOWERS = [
    ("model.acoustic_tokenizer.encoder.", "model.audio_tower.encoder."),
    ("model.acoustic_tokenizer.decoder.", "model.audio_tower.decoder."),
    ("model.semantic_tokenizer.encoder.", "model.semantic_tokenizer_encoder."),
]
RULES: list[tuple[str, str]] = [
    ("lm_head.<*>", "lm_head.<*>"),
    ("model.language_model.<*>", "model.language_model.<*>"),  # Qwen2: same names
    ("model.speech_scaling_factor", "model.latent_scaling_factor"),
    ("model.speech_bias_factor", "model.latent_bias_factor"),
    ("model.acoustic_connector.fc1.<*>", "model.multi_modal_projector.linear_1.<*>"),
    ("model.acoustic_connector.norm.<*>", "model.multi_modal_projector.act.<*>"),
    ("model.acoustic_connector.fc2.<*>", "model.multi_modal_projector.linear_2.<*>"),
    ("model.semantic_connector.fc1.<*>", "model.semantic_connector.linear_1.<*>"),
    ("model.semantic_connector.norm.<*>", "model.semantic_connector.act.<*>"),
    ("model.semantic_connector.fc2.<*>", "model.semantic_connector.linear_2.<*>"),
    ("model.prediction_head.noisy_images_proj.<*>", "model.diffusion_head.noisy_images_proj.<*>"),
    ("model.prediction_head.cond_proj.<*>", "model.diffusion_head.cond_proj.<*>"),
    ("model.prediction_head.t_embedder.mlp.0.<*>", "model.diffusion_head.timestep_proj.fc1.<*>"),
    ("model.prediction_head.t_embedder.mlp.2.<*>", "model.diffusion_head.timestep_proj.fc2.<*>"),
    ("model.prediction_head.layers.<N>.adaLN_modulation.1.<*>", "model.diffusion_head.layers.<N>.linear.<*>"),
    ("model.prediction_head.layers.<N>.<*>", "model.diffusion_head.layers.<N>.<*>"),  # ffn.*, norm
    ("model.prediction_head.final_layer.adaLN_modulation.1.<*>", "model.diffusion_head.final_layer.linear_1.<*>"),
    ("model.prediction_head.final_layer.linear.<*>", "model.diffusion_head.final_layer.linear_2.<*>"),
] + [(old + rule_old, new + rule_new) for old, new in _TOWERS for rule_old, rule_new in _TOWER_RULES]

_PLACEHOLDERS = {"<N>": r"(?P<n>\d+)", "<J>": r"(?P<j>\d+)", "<*>": r"(?P<rest>.+)"}


def _compile(original: str, target: str) -> tuple[re.Pattern, Callable[[re.Match], str]]:
    pattern = re.escape(original)
    for placeholder, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(placeholder), group)

    def build(match: re.Match) -> str:
        groups = match.groupdict()
        name = target
        if groups.get("n") is not None:
            name = name.replace("<N-1>", str(int(groups["n"]) - 1)).replace("<N>", groups["n"])
        for placeholder, key in (("<J>", "j"), ("<*>", "rest")):
            if groups.get(key) is not None:
                name = name.replace(placeholder, groups[key])
        return name

    return re.compile(pattern + r"\Z"), build


_COMPILED = [_compile(original, target) for original, target in RULES]


def transformers_name(original: str) -> str | None:
    """The transformers name of the original tensor name ``original``, or None when no rule covers it."""
    for pattern, build in _COMPILED:
        match = pattern.match(original)
        if match:
            return build(match)
    return None


# --------------------------------------------------------------------------------------------- config
SPECIAL_TOKENS = {  # VibeVoice's roles for Qwen2.5 tokens, as in the original processor
    "audio_bos_token_id": "<|vision_start|>",
    "audio_eos_token_id": "<|vision_end|>",
    "audio_token_id": "<|vision_pad|>",
    "eos_token_id": "<|endoftext|>",
    "pad_token_id": "<|endoftext|>",
}
QWEN_BY_HIDDEN_SIZE = {1536: "Qwen/Qwen2.5-1.5B", 3584: "Qwen/Qwen2.5-7B"}
# what the conversion assumes of the original tokenizer towers (the values of every released checkpoint)
_TOWER_REQUIREMENTS = {
    "conv_norm": "none",
    "mixer_layer": "depthwise_conv",
    "layernorm": "RMSNorm",
    "layernorm_elementwise_affine": True,
    "disable_last_norm": True,
    "causal": True,
    "conv_bias": True,
    "pad_mode": "constant",
}
SYSTEM_PROMPT = (
    " Transform the text provided by various speakers into speech output, "
    "utilizing the distinct voice of each respective speaker.\n"
)
# The released transformers checkpoints' prompt layout: the system line; " Voice input:" and one line per
# speaker with a voice (in the order they first appear); " Text input:" and one line per text item;
# " Speech output:" and the audio_bos token.
CHAT_TEMPLATE = (
    "{{- system_prompt | default(" + json.dumps(SYSTEM_PROMPT) + ") -}}"
    "{%- set voiced = namespace(roles=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] | selectattr('type', 'equalto', 'audio') | list"
    " and message['role'] not in voiced.roles -%}"
    "{%- set voiced.roles = voiced.roles + [message['role']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if voiced.roles -%}"
    "{{- ' Voice input:\\n' -}}"
    "{%- for role in voiced.roles -%}"
    "{{- ' Speaker ' ~ role ~ ':<|vision_start|><|vision_pad|><|vision_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' Text input:\\n' -}}"
    "{%- for message in messages -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- ' Speaker ' ~ message['role'] ~ ': ' ~ item['text'] ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- ' Speech output:\\n<|vision_start|>' -}}"
)


class ConversionError(RuntimeError):
    """SRC cannot be converted; the message says why."""


def _depths(value: object, where: str) -> list[int]:
    if isinstance(value, str):
        return [int(part) for part in value.split("-")]
    if isinstance(value, list) and all(isinstance(part, int) for part in value):
        return value
    raise ConversionError(f"{where}: encoder_depths must be like '3-3-3-3-3-3-8' or a list, got {value!r}")


def _tower_config(original: dict, name: str, *, decoder: bool) -> dict:
    """transformers' config of one tokenizer tower from the original sub-config ``name``."""
    wrong = {
        key: original.get(key)
        for key, wanted in _TOWER_REQUIREMENTS.items()
        if key in original and original[key] != wanted
    }
    if wrong:
        raise ConversionError(f"{name} has settings the transformers model does not implement: {wrong}")
    depths = _depths(original.get("encoder_depths", "3-3-3-3-3-3-8"), name)
    ratios = list(original.get("encoder_ratios", [8, 5, 5, 4, 2, 2]))
    if decoder:
        if original.get("decoder_ratios") not in (None, ratios):
            raise ConversionError(f"{name}: decoder_ratios differ from encoder_ratios, not supported")
        if original.get("decoder_n_filters", original.get("encoder_n_filters")) != original.get("encoder_n_filters"):
            raise ConversionError(f"{name}: decoder_n_filters differ from encoder_n_filters, not supported")
        decoder_depths = original.get("decoder_depths")
        if decoder_depths is not None and _depths(decoder_depths, name) != depths[::-1]:
            raise ConversionError(f"{name}: decoder_depths are not the encoder's reversed, not supported")
    config = {
        "model_type": "vibevoice_acoustic_tokenizer" if decoder else "vibevoice_acoustic_tokenizer_encoder",
        "channels": original.get("channels", 1),
        "hidden_size": original["vae_dim"],
        "num_filters": original.get("encoder_n_filters", 32),
        "downsampling_ratios": ratios[::-1],  # the original lists them decoder-first
        "depths": depths,
        "rms_norm_eps": original.get("layernorm_eps", 1e-5),
        "layer_scale_init_value": original.get("layer_scale_init_value", 1e-6),
        "initializer_range": original.get("weight_init_value", 1e-2),
    }
    if decoder and original.get("std_dist_type", "gaussian") == "gaussian":
        # the original draws a per-item noise scale from N(0, fix_std / 0.8); transformers from N(0, vae_std)
        config["vae_std"] = original.get("fix_std", 0.5) / 0.8
    return config


def convert_config(original: dict, tokenizer) -> dict:
    """The transformers VibeVoiceConfig (as a dict of its arguments) for an original config.json."""
    from vv_worker.checkpoint import is_original_format

    if not is_original_format(original):
        raise ConversionError(
            "config.json is not in the original layout (it needs decoder_config and acoustic_tokenizer_config "
            "and no text_config); a transformers-format checkpoint needs no conversion"
        )
    missing = [
        key
        for key in ("decoder_config", "acoustic_tokenizer_config", "semantic_tokenizer_config", "diffusion_head_config")
        if not isinstance(original.get(key), dict)
    ]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}")
    text = {k: v for k, v in original["decoder_config"].items() if k not in ("torch_dtype", "transformers_version")}
    if text.get("model_type") != "qwen2":
        raise ConversionError(f"decoder_config.model_type is {text.get('model_type')!r}; only qwen2 is supported")
    acoustic = _tower_config(original["acoustic_tokenizer_config"], "acoustic_tokenizer_config", decoder=True)
    semantic = _tower_config(original["semantic_tokenizer_config"], "semantic_tokenizer_config", decoder=False)
    head = original["diffusion_head_config"]
    if head.get("hidden_size", text["hidden_size"]) != text["hidden_size"]:
        raise ConversionError("diffusion_head_config.hidden_size differs from decoder_config.hidden_size")
    if head.get("latent_size", acoustic["hidden_size"]) != acoustic["hidden_size"]:
        raise ConversionError("diffusion_head_config.latent_size differs from the acoustic tokenizer's vae_dim")
    diffusion = {
        "hidden_size": text["hidden_size"],
        "latent_size": acoustic["hidden_size"],
        "num_hidden_layers": head.get("head_layers", 4),
        "intermediate_size": int(text["hidden_size"] * head.get("head_ffn_ratio", 3.0)),
        "rms_norm_eps": head.get("rms_norm_eps", 1e-5),
    }
    ids = {}
    for field, token in SPECIAL_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id or token_id >= text["vocab_size"]:
            raise ConversionError(f"the tokenizer has no usable {token} (needed as {field}): not a Qwen2.5 tokenizer?")
        ids[field] = token_id
    dtype = original["decoder_config"].get("torch_dtype") or original.get("torch_dtype") or "bfloat16"
    return {
        "text_config": text,
        "audio_config": acoustic,
        "semantic_model_config": semantic,
        "diffusion_head_config": diffusion,
        "dtype": dtype,
        **ids,
    }


def noise_scheduler_config(original: dict) -> dict:
    """The diffusion scheduler settings of the original diffusion_head_config, in diffusers' names."""
    head = original["diffusion_head_config"]
    schedule = head.get("ddpm_beta_schedule", "cosine")
    return {
        "beta_schedule": "squaredcos_cap_v2" if schedule == "cosine" else schedule,
        "prediction_type": head.get("prediction_type", "v_prediction"),
        "num_train_timesteps": head.get("ddpm_num_steps", 1000),
    }


# -------------------------------------------------------------------------------------------- weights
def shard_names(folder: Path) -> dict[str, list[str]]:
    """Tensor names per safetensors file of ``folder``, from the index or the single file's header."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        return shards
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ConversionError(f"{folder} has no model.safetensors.index.json or model.safetensors")
    with safe_open(str(single), framework="pt") as handle:
        return {single.name: list(handle.keys())}


def plan_renames(folder: Path, config, tied: bool) -> dict[str, dict[str, str | None]]:
    """Per shard: original name -> transformers name (None: dropped); checked against the model's own names."""
    import torch
    from safetensors import safe_open
    from transformers import VibeVoiceForConditionalGeneration

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in VibeVoiceForConditionalGeneration(config).state_dict().items()}
    if tied:
        expected.pop("lm_head.weight", None)
    plan: dict[str, dict[str, str | None]] = {}
    found: dict[str, tuple[int, ...]] = {}
    uncovered: list[str] = []
    for shard, names in shard_names(folder).items():
        path = folder / shard
        if not path.is_file():
            raise ConversionError(f"the index names {shard}, which is not in {folder}")
        renames: dict[str, str | None] = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in names:
                new = transformers_name(name)
                if new is None:
                    uncovered.append(name)
                    continue
                if tied and new == "lm_head.weight":
                    renames[name] = None  # tied to the embeddings on load, as the original code does
                    continue
                renames[name] = new
                found[new] = tuple(handle.get_slice(name).get_shape())
        plan[shard] = renames
    problems = []
    if uncovered:
        problems.append(f"{len(uncovered)} tensor(s) match no rule (e.g. {', '.join(sorted(uncovered)[:3])})")
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(found) & set(expected) if found[name] != expected[name])
    if missing:
        problems.append(f"{len(missing)} tensor(s) the model needs are absent (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the model does not have (e.g. {', '.join(extra[:3])})")
    if wrong:
        sample = ", ".join(f"{name} {found[name]} vs {expected[name]}" for name in wrong[:3])
        problems.append(f"{len(wrong)} tensor(s) have another shape than the config implies (e.g. {sample})")
    if problems:
        raise ConversionError("the weights do not fit the converted config: " + "; ".join(problems))
    return plan


def write_weights(src: Path, out: Path, plan: dict[str, dict[str, str | None]]) -> int:
    """Rename shard by shard into ``out``; write an index when there is more than one shard. Returns bytes."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    total = 0
    for shard, renames in plan.items():
        tensors = {}
        with safe_open(str(src / shard), framework="pt") as handle:
            for name, new in renames.items():
                if new is not None:
                    tensors[new] = handle.get_tensor(name)
        target = "model.safetensors" if len(plan) == 1 else shard
        save_file(tensors, str(out / target), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, target))
        print(f"  {shard} -> {target}: {len(tensors)} tensors")
        del tensors
    if len(plan) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return total


# ----------------------------------------------------------------------------------------------- main
def _package():
    try:
        import vv_worker  # noqa: F401
    except ImportError:  # run from a checkout without the package installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def fetch_source(src: str, revision: str | None) -> Path:
    """SRC as a local folder: itself, or the original checkpoint's json and safetensors files from the hub."""
    folder = Path(src).expanduser()
    if folder.is_dir():
        return folder
    from vv_worker.provision import looks_like_path

    if looks_like_path(src) or src.count("/") != 1:
        raise ConversionError(f"{src}: no such folder (and not a hub repo id of the form ORG/NAME)")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, snapshot_download

    try:  # one quick request first: an unreachable hub fails in seconds, not after minutes of retries
        get_hf_file_metadata(hf_hub_url(src, "config.json", revision=revision), timeout=10)
    except Exception as error:
        raise ConversionError(f"cannot fetch {src} from the hub: {type(error).__name__}: {error}") from None
    print(f"downloading {src}@{revision or 'main'} (json and safetensors files) into the Hugging Face cache")
    return Path(snapshot_download(src, revision=revision, allow_patterns=["*.json", "*.safetensors"]))


def default_tokenizer(src: Path, original: dict) -> str:
    processor = src / "preprocessor_config.json"
    if processor.is_file():
        name = json.loads(processor.read_text(encoding="utf-8")).get("language_model_pretrained_name")
        if name:
            return name
    hidden = original.get("decoder_config", {}).get("hidden_size")
    if hidden in QWEN_BY_HIDDEN_SIZE:
        return QWEN_BY_HIDDEN_SIZE[hidden]
    raise ConversionError(f"cannot tell which Qwen2.5 tokenizer fits a {hidden}-wide LM: pass --tokenizer")


def feature_extractor(src: Path):
    """The audio feature extractor, with the original preprocessor_config.json's audio settings when present."""
    from transformers import VibeVoiceAcousticTokenizerFeatureExtractor

    settings = {}
    path = src / "preprocessor_config.json"
    if path.is_file():
        audio = json.loads(path.read_text(encoding="utf-8")).get("audio_processor", {})
        settings = {k: audio[k] for k in ("sampling_rate", "normalize_audio", "target_dB_FS", "eps") if k in audio}
    return VibeVoiceAcousticTokenizerFeatureExtractor(**settings)


def convert(src: Path, out: Path, tokenizer_source: str | None) -> None:
    from transformers import AutoTokenizer, GenerationConfig, VibeVoiceConfig, VibeVoiceProcessor

    from vv_worker.checkpoint import CheckpointError, read_config, verify_checkpoint

    try:
        original = read_config(src)
    except CheckpointError as error:
        raise ConversionError(str(error)) from None
    tokenizer_source = tokenizer_source or default_tokenizer(src, original)
    print(f"tokenizer: {tokenizer_source}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except Exception as error:
        raise ConversionError(
            f"the tokenizer {tokenizer_source!r} does not load ({type(error).__name__}: {error}); "
            "pass a local Qwen2.5 tokenizer folder with --tokenizer"
        ) from None
    arguments = convert_config(original, tokenizer)
    config = VibeVoiceConfig(**arguments)
    plan = plan_renames(src, config, tied=bool(config.tie_word_embeddings))

    out.mkdir(parents=True, exist_ok=True)
    print(f"writing {out}")
    size = write_weights(src, out, plan)
    config.architectures = ["VibeVoiceForConditionalGeneration"]
    config.save_pretrained(out)
    generation = GenerationConfig.from_model_config(config)
    generation.noise_scheduler_class = "DPMSolverMultistepScheduler"
    generation.noise_scheduler_config = noise_scheduler_config(original)
    generation.save_pretrained(out)
    VibeVoiceProcessor(
        feature_extractor=feature_extractor(src), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    ).save_pretrained(out)
    try:
        verify_checkpoint(out)
    except CheckpointError as error:
        raise ConversionError(str(error)) from None
    print(
        f"ok: {out} is a transformers-format VibeVoice checkpoint ({size / 1e9:.2f} GB of weights); use VV_MODEL={out}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="original-format checkpoint: a local folder or a hub repo id")
    parser.add_argument("out", type=Path, help="new folder for the transformers-format checkpoint")
    parser.add_argument("--tokenizer", help="Qwen2.5 tokenizer: local folder or hub id (default: see above)")
    parser.add_argument("--revision", help="branch, tag or commit of SRC on the hub (default: main)")
    args = parser.parse_args(argv)
    _package()
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"convert_checkpoint: {args.out} exists and is not an empty folder; choose a new one", file=sys.stderr)
        return 1
    try:
        convert(fetch_source(args.src, args.revision), args.out, args.tokenizer)
    except ConversionError as error:
        print(f"convert_checkpoint: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
