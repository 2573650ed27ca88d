"""scripts/download_model.py: the offline checkpoint verification, on the tiny model and damaged copies."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from vv_worker.checkpoint import CheckpointError, checkpoint_problems, verify_checkpoint

SCRIPT = REPO / "scripts" / "download_model.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("download_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sharded_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model re-saved as two safetensors shards with an index, as the real 7B checkpoint is."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("sharded")
    for item in tiny_model_dir.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, folder / item.name)
    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for number, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-{number:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    index["weight_map"] = weight_map
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def damaged(sharded_dir, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(sharded_dir, copy)
    return copy


def test_tiny_model_is_a_complete_checkpoint(tiny_model_dir):
    assert checkpoint_problems(tiny_model_dir) == []
    verify_checkpoint(tiny_model_dir)


def test_sharded_checkpoint_is_complete(sharded_dir):
    assert checkpoint_problems(sharded_dir) == []


def test_missing_shard_is_reported(damaged):
    (damaged / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing shard model-00002-of-00002\.safetensors"):
        verify_checkpoint(damaged)


def test_empty_and_truncated_shards_are_reported(damaged):
    (damaged / "model-00001-of-00002.safetensors").write_bytes(b"")
    second = damaged / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-100])
    problems = checkpoint_problems(damaged)
    assert any("empty shard model-00001" in p for p in problems)
    assert any("truncated shard model-00002" in p for p in problems)


def test_index_naming_a_tensor_the_shard_lacks(damaged):
    index = json.loads((damaged / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    (damaged / "model.safetensors.index.json").write_text(json.dumps(index))
    assert any("lacks 1 tensor(s)" in p and "ghost.weight" in p for p in checkpoint_problems(damaged))


def test_wrong_model_type(damaged):
    config = json.loads((damaged / "config.json").read_text())
    config["model_type"] = "llama"
    (damaged / "config.json").write_text(json.dumps(config))
    assert any("model_type" in p for p in checkpoint_problems(damaged))


def test_missing_processor_files(damaged):
    (damaged / "processor_config.json").unlink()
    (damaged / "tokenizer.json").unlink()
    assert any("processor" in p for p in checkpoint_problems(damaged))


def test_no_weights_at_all(damaged):
    for shard in damaged.glob("*.safetensors*"):
        shard.unlink()
    assert any("no weights" in p for p in checkpoint_problems(damaged))


def test_cli_verify_only_exit_codes(sharded_dir, damaged, capsys):
    assert _load_script().main(["--verify-only", "--out", str(sharded_dir)]) == 0
    assert "complete VibeVoice checkpoint" in capsys.readouterr().out
    (damaged / "model-00002-of-00002.safetensors").unlink()
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--verify-only", "--out", str(damaged)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "missing shard model-00002-of-00002.safetensors" in bad.stderr


def test_download_passes_the_token_and_patterns_and_never_prints_the_token(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    module = _load_script()
    secret = "hf_" + "x" * 34
    token_file = tmp_path / "hf_token"
    token_file.write_text(secret + "\n")
    out = tmp_path / "model"
    calls = {}

    def fake_snapshot_download(**kwargs):
        calls.update(kwargs)
        shutil.copytree(tiny_model_dir, kwargs["local_dir"])
        return kwargs["local_dir"]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: calls.update(checked=url))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code = module.main(["--repo", "org/model", "--revision", "abc", "--out", str(out), "--token-file", str(token_file)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert calls["repo_id"] == "org/model" and calls["revision"] == "abc" and calls["token"] == secret
    assert calls["checked"].endswith("org/model/resolve/abc/config.json")
    assert "*.safetensors" in calls["allow_patterns"] and "*.bin" not in calls["allow_patterns"]
    assert secret not in printed.out + printed.err and "with a token" in printed.out


def test_token_sources(tmp_path, monkeypatch, capsys):
    module = _load_script()
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    assert module.read_token(None) == "hf_fromenv"
    assert module.read_token(tmp_path / "absent") == "hf_fromenv"  # an unset BuildKit secret
    (tmp_path / "file").write_text("hf_fromfile\n")
    assert module.read_token(tmp_path / "file") == "hf_fromfile"
    monkeypatch.delenv("HF_TOKEN")
    assert module.read_token(None) is None
    assert "hf_" not in capsys.readouterr().err


def test_download_failure_hides_the_token(tmp_path, monkeypatch, capsys):
    module = _load_script()
    secret = "hf_" + "y" * 34

    def failing(**kwargs):
        raise OSError(f"401 for token {kwargs['token']}")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: None)
    monkeypatch.setenv("HF_TOKEN", secret)
    assert module.main(["--out", str(tmp_path / "m")]) == 1
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err and "the download failed" in printed.err


def test_revision_defaults_to_vv_model_revision_and_the_commit_is_printed(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    module = _load_script()
    commit = "c" * 40
    calls = {}

    def fake_snapshot_download(**kwargs):
        calls.update(kwargs)
        shutil.copytree(tiny_model_dir, kwargs["local_dir"])
        record = Path(kwargs["local_dir"]) / ".cache" / "huggingface" / "download" / "config.json.metadata"
        record.parent.mkdir(parents=True)
        record.write_text(f'{commit}\n"etag"\n1700000000.0\n')  # what huggingface_hub records per file
        return kwargs["local_dir"]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: None)
    monkeypatch.setenv("VV_MODEL_REVISION", commit[:12])
    assert module.main(["--repo", "org/model", "--out", str(tmp_path / "m")]) == 0
    assert calls["revision"] == commit[:12]
    assert f"set VV_MODEL_REVISION={commit}" in capsys.readouterr().out


def test_unreachable_hub_fails_in_seconds(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert "the download failed" in done.stderr and "Retrying" not in done.stderr
