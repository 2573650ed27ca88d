"""Start-up fitness checks: each passes on a healthy setup and fails with a clear reason otherwise."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from vv_worker.config import load_settings
from vv_worker.fitness import (
    FitnessError,
    check_gpu,
    check_model_loadable,
    check_voices,
    gpu_required,
    register_fitness_checks,
)


def _voices(folder, files: dict[str, bytes], listed: dict[str, bytes] | None = None):
    """A voice folder whose manifest lists ``listed`` (name -> content) and which holds ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = files if listed is None else listed
    entries = [
        {
            "name": name,
            "file": f"{name}.wav",
            "url": f"https://example.invalid/{name}.wav",
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        for name, content in listed.items()
    ]
    (folder / "manifest.json").write_text(json.dumps({"voices": entries}))
    for name, content in files.items():
        (folder / f"{name}.wav").write_bytes(content)
    return folder


# ------------------------------------------------------------------------ model


def test_model_loadable_passes_and_fails():
    check_model_loadable(lambda: object())
    with pytest.raises(FitnessError, match="does not load: OSError: no such checkpoint"):
        check_model_loadable(lambda: (_ for _ in ()).throw(OSError("no such checkpoint")))
    with pytest.raises(FitnessError, match="returned nothing"):
        check_model_loadable(lambda: None)


# -------------------------------------------------------------------------- GPU


@pytest.mark.parametrize(
    ("overrides", "on_runpod", "needs"),
    [
        ({"device": "cpu"}, True, None),
        ({"device": "auto"}, False, None),
        ({"device": "auto"}, True, "VV_DEVICE=auto on a RunPod endpoint"),
        ({"device": "cuda"}, False, "VV_DEVICE=cuda"),
        ({"device": "cuda:1"}, False, "VV_DEVICE=cuda:1"),
        ({"dtype": "bfloat16"}, False, "VV_DTYPE=bfloat16"),
        ({"attn_implementation": "flash_attention_2"}, False, "VV_ATTN_IMPLEMENTATION=flash_attention_2"),
    ],
)
def test_gpu_required(overrides, on_runpod, needs):
    assert gpu_required(load_settings(**overrides), on_runpod=on_runpod) == needs


def test_gpu_check_fails_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpu(load_settings(device="cpu"), on_runpod=True)  # the CPU needs no GPU
    check_gpu(load_settings(device="auto"), on_runpod=False)  # auto off RunPod may fall back to the CPU
    with pytest.raises(FitnessError, match="VV_DTYPE=bfloat16 needs a CUDA GPU, but torch sees none"):
        check_gpu(load_settings(dtype="bfloat16"), on_runpod=False)
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "abc")
    with pytest.raises(FitnessError, match="RunPod endpoint needs a CUDA GPU"):
        check_gpu(load_settings(device="auto"))


def test_gpu_check_with_a_visible_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpu(load_settings(device="cuda"))
    check_gpu(load_settings(device="cuda:0"))
    with pytest.raises(FitnessError, match="VV_DEVICE=cuda:1 but torch sees only 1 GPU"):
        check_gpu(load_settings(device="cuda:1"))


# ----------------------------------------------------------------------- voices


def test_voices_all_present_and_matching(tmp_path):
    report = check_voices(_voices(tmp_path / "v", {"alice": b"a" * 100, "bob": b"b" * 50}))
    assert len(report.ok) == 2 and not report.missing and not report.mismatched


def test_voices_altered_file_fails(tmp_path):
    folder = _voices(tmp_path / "v", {"alice": b"a" * 100, "bob": b"b" * 50})
    (folder / "bob.wav").write_bytes(b"tampered")
    with pytest.raises(FitnessError, match=r"do not match the manifest's sha256: bob \(bob.wav\)"):
        check_voices(folder)


def test_voices_missing_are_reported_and_fatal_only_when_required(tmp_path, caplog):
    folder = _voices(tmp_path / "v", {"alice": b"a"}, listed={"alice": b"a", "carter": b"c"})
    with caplog.at_level(logging.WARNING, logger="vv_worker.fitness"):
        report = check_voices(folder)
    assert report.missing == ["carter (carter.wav)"] and "carter (carter.wav)" in caplog.text
    with pytest.raises(FitnessError, match="not present: carter"):
        check_voices(folder, require_all=True)


def test_voices_without_manifest_or_with_a_broken_one(tmp_path):
    assert check_voices(tmp_path).ok == []
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(FitnessError, match=r"manifest .* is not valid"):
        check_voices(tmp_path)


# ----------------------------------------------------------------- registration


def test_register_fitness_checks_order_and_behaviour(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    registered = []
    folder = _voices(tmp_path / "v", {"alice": b"a"})
    settings = load_settings(device="cpu", voices_dir=folder)
    checks = register_fitness_checks(settings, lambda: "model", register=registered.append)
    assert registered == checks
    assert [c.__name__ for c in checks] == [
        "vv_gpu_visible",
        "vv_voices_match_manifest",
        "vv_model_loadable",
    ]
    for check in checks:
        check()

    (folder / "alice.wav").write_bytes(b"changed")
    bad = register_fitness_checks(load_settings(dtype="bfloat16", voices_dir=folder), register=lambda f: f)
    assert [c.__name__ for c in bad] == ["vv_gpu_visible", "vv_voices_match_manifest"]
    for check in bad:
        with pytest.raises(FitnessError):
            check()


def test_registers_with_the_runpod_sdk():
    from runpod.serverless.modules import rp_fitness

    before = list(rp_fitness._fitness_checks)
    try:
        checks = register_fitness_checks(load_settings(device="cpu"), lambda: 1)
        assert rp_fitness._fitness_checks[-len(checks) :] == checks
    finally:
        rp_fitness._fitness_checks[:] = before
