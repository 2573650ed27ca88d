"""scripts/convert_checkpoint.py on a tiny original-format checkpoint, and the worker refusing unconverted ones.

The original checkpoint is built from ``tests/data/original_tiny_checkpoint.json``: an original-layout
config with the tiny model's sizes and the tensor names and shapes that the original implementation's
``state_dict()`` has for it (recorded from vibevoice-community/VibeVoice). So the names the converter
reads are the original code's, and the names it writes are checked against transformers' model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "convert_checkpoint.py"
RECORD = json.loads((REPO / "tests" / "data" / "original_tiny_checkpoint.json").read_text())


def _load_script():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _original_tensors(seed: int = 0) -> dict:
    """Random tensors with the recorded names and shapes; norms at one and the LM head at zero.

    A zero LM head makes the four tokens VibeVoice may emit tie, so argmax picks the audio token (the
    tiny tokenizer's lowest id) every step, as with the tiny model: each request yields its frame cap.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in RECORD["tensors"].items():
        if name == "lm_head.weight":
            tensor = torch.zeros(shape)
        elif name.endswith(("norm.weight", "gamma")):
            tensor = torch.ones(shape)
        elif name == "model.speech_scaling_factor":
            tensor = torch.tensor(1.0)
        elif name == "model.speech_bias_factor":
            tensor = torch.tensor(0.0)
        else:
            tensor = 0.1 * torch.randn(shape, generator=generator)
        tensors[name] = tensor.contiguous()
    return tensors


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory):
    """A tiny checkpoint in the original layout: its config, two shards with an index, preprocessor_config.json."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("original-tiny")
    (folder / "config.json").write_text(json.dumps(RECORD["config"], indent=2))
    processor = {"speech_tok_compress_ratio": 3200, "db_normalize": True, "audio_processor": {"target_dB_FS": -25}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    tensors = _original_tensors()
    names = sorted(tensors)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        shard = f"model-{number:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def converted_dir(original_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "model"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(original_dir), str(out), "--tokenizer", str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "ok:" in result.stdout
    return out


def test_every_recorded_original_name_maps_onto_the_transformers_model():
    """The rule table against both real layouts: the original's names in, transformers' names out."""
    import torch
    from transformers import VibeVoiceConfig, VibeVoiceForConditionalGeneration

    module = _load_script()
    mapped = {module.transformers_name(name): tuple(shape) for name, shape in RECORD["tensors"].items()}
    assert None not in mapped
    assert len(mapped) == len(RECORD["tensors"])  # no two original names land on one
    arguments = module.convert_config(RECORD["config"], _FixedIds())
    with torch.device("meta"):
        model = VibeVoiceForConditionalGeneration(VibeVoiceConfig(**arguments))
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert mapped == expected


class _FixedIds:
    """Stands in for a tokenizer where only in-vocabulary ids of the special tokens matter."""

    unk_token_id = None

    def convert_tokens_to_ids(self, token: str) -> int:
        return ["<|vision_pad|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>"].index(token) + 10


def test_the_rules_rename_real_original_names():
    module = _load_script()
    cases = {
        "model.acoustic_tokenizer.encoder.downsample_layers.0.0.conv.conv.weight": (
            "model.audio_tower.encoder.stem.conv.conv.weight"
        ),
        "model.acoustic_tokenizer.encoder.downsample_layers.3.0.conv.conv.bias": (
            "model.audio_tower.encoder.conv_layers.2.conv.conv.bias"
        ),
        "model.acoustic_tokenizer.decoder.upsample_layers.6.0.convtr.convtr.weight": (
            "model.audio_tower.decoder.conv_layers.5.convtr.convtr.weight"
        ),
        "model.semantic_tokenizer.encoder.stages.0.0.mixer.conv.conv.conv.weight": (
            "model.semantic_tokenizer_encoder.stem.stage.0.mixer.conv.weight"
        ),
        "model.semantic_tokenizer.encoder.stages.4.0.ffn_gamma": (
            "model.semantic_tokenizer_encoder.conv_layers.3.stage.0.ffn_gamma"
        ),
        "model.acoustic_tokenizer.decoder.head.conv.conv.weight": "model.audio_tower.decoder.head.conv.weight",
        "model.prediction_head.t_embedder.mlp.2.weight": "model.diffusion_head.timestep_proj.fc2.weight",
        "model.prediction_head.layers.3.adaLN_modulation.1.weight": "model.diffusion_head.layers.3.linear.weight",
        "model.prediction_head.final_layer.linear.weight": "model.diffusion_head.final_layer.linear_2.weight",
        "model.acoustic_connector.norm.weight": "model.multi_modal_projector.act.weight",
        "model.speech_bias_factor": "model.latent_bias_factor",
        "model.language_model.layers.27.mlp.up_proj.weight": "model.language_model.layers.27.mlp.up_proj.weight",
    }
    assert {name: module.transformers_name(name) for name in cases} == cases
    assert module.transformers_name("model.acoustic_tokenizer.encoder.norm.weight") is None  # disable_last_norm=False


def test_converted_weights_equal_the_originals(converted_dir, original_dir):
    import torch
    from transformers import VibeVoiceForConditionalGeneration

    module = _load_script()
    model = VibeVoiceForConditionalGeneration.from_pretrained(str(converted_dir), local_files_only=True)
    state = model.state_dict()
    original = _original_tensors()
    assert len(state) == len(original)
    for name, tensor in original.items():
        assert torch.equal(state[module.transformers_name(name)], tensor), name
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["audio_config"]["vae_std"] == pytest.approx(0.5 / 0.8)  # fix_std 0.5, per-item gaussian scale
    assert config["audio_config"]["downsampling_ratios"] == [2, 2, 4, 5, 5, 8]
    generation = json.loads((converted_dir / "generation_config.json").read_text())
    assert generation["noise_scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"  # the original's "cosine"
    assert sorted(p.name for p in converted_dir.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_converted_chat_template_renders_the_tiny_models_prompt(converted_dir, tiny_model_dir):
    """Both mirror the released checkpoints' layout; a voice for a later speaker and two lines each."""
    from transformers import AutoProcessor

    conversation = [
        {"role": "1", "content": [{"type": "text", "text": "Hi."}, {"type": "audio", "audio": np.zeros(2400)}]},
        {"role": "0", "content": [{"type": "text", "text": "Hello there."}]},
        {"role": "1", "content": [{"type": "text", "text": "Bye."}]},
    ]
    rendered = [
        AutoProcessor.from_pretrained(str(folder), local_files_only=True).apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=True,  # as the engine calls it
        )
        for folder in (converted_dir, tiny_model_dir)
    ]
    assert rendered[0] == rendered[1]
    assert " Voice input:\n Speaker 1:<|vision_start|><|vision_pad|><|vision_end|>\n" in rendered[0]


def test_worker_generates_from_the_converted_checkpoint(converted_dir, subprocess_env, tmp_path):
    import soundfile as sf

    text = "Hello from a converted checkpoint."
    out = tmp_path / "converted.wav"
    result = subprocess.run(
        [sys.executable, "-m", "vv_worker.local", "--text", text, "--seed", "3", "--out", str(out)],
        env=dict(subprocess_env, VV_MODEL=str(converted_dir)),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the zero LM head picks the audio token every step, so the generation runs to its frame cap
    cap = int(subprocess_env["VV_EXTRA_FRAMES"]) + math.ceil(float(subprocess_env["VV_FRAMES_PER_CHAR"]) * len(text))
    assert f"for {cap} frames" in result.stdout
    samples, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and samples.size == cap * 3200
    assert np.isfinite(samples).all() and samples.std() > 0


def _run_worker(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "vv_worker.handler", "--test_input", '{"input": {"text": "hi"}}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return result, time.monotonic() - started


def test_worker_refuses_an_original_format_folder_in_seconds(original_dir, subprocess_env):
    result, seconds = _run_worker(dict(subprocess_env, VV_MODEL=str(original_dir)))
    assert result.returncode == 2
    assert "original-format VibeVoice checkpoint" in result.stderr and "convert_checkpoint.py" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert seconds < 30


def test_worker_refuses_an_original_format_hub_repo_from_the_cache(original_dir, subprocess_env, tmp_path):
    """A hub id whose cached config.json is original-format (as aoi-ot/VibeVoice-Large's is), hub offline."""
    repo = tmp_path / "hf" / "hub" / "models--aoi-ot--VibeVoice-Large"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(original_dir / "config.json", snapshot / "config.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(subprocess_env, VV_MODEL="aoi-ot/VibeVoice-Large", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result, seconds = _run_worker(env)
    assert result.returncode == 2
    assert "aoi-ot/VibeVoice-Large is an original-format VibeVoice checkpoint" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert seconds < 30


def test_converter_refuses_what_it_cannot_convert(converted_dir, original_dir, tiny_model_dir, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)

    already = run(converted_dir, tmp_path / "again", "--tokenizer", tiny_model_dir)
    assert already.returncode == 1 and "needs no conversion" in already.stderr
    assert run(original_dir, converted_dir, "--tokenizer", tiny_model_dir).returncode == 1  # OUT not empty
    missing = run(tmp_path / "nowhere" / "model", tmp_path / "out")
    assert missing.returncode == 1 and "no such folder" in missing.stderr

    odd = tmp_path / "odd"
    shutil.copytree(original_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["acoustic_tokenizer_config"]["disable_last_norm"] = False
    (odd / "config.json").write_text(json.dumps(config))
    refused = run(odd, tmp_path / "odd-out", "--tokenizer", tiny_model_dir)
    assert refused.returncode == 1 and "disable_last_norm" in refused.stderr
    assert not (tmp_path / "odd-out").exists()  # nothing written before the checks pass

    for line in refused.stderr, already.stderr, missing.stderr:
        assert "Traceback" not in line
