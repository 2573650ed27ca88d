"""Where the model is loaded from: every branch of resolve_model, on temporary folders."""

from __future__ import annotations

import logging
import os
import time

import pytest

from vv_worker.provision import ModelSource, ProvisionError, resolve_model

REPO_ID = "vibevoice/VibeVoice-7B-hf"


def _checkpoint(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def roots(tmp_path):
    return {
        "runpod_cache_root": tmp_path / "runpod-volume" / "huggingface-cache" / "hub",
        "volume_models_root": tmp_path / "runpod-volume" / "models",
        "baked_root": tmp_path / "app" / "models",
    }


def test_local_folder_is_used_offline(tmp_path, roots, caplog):
    folder = _checkpoint(tmp_path / "mine")
    with caplog.at_level(logging.INFO, logger="vv_worker.provision"):
        source = resolve_model(str(folder), **roots)
    assert source == ModelSource(str(folder), "local_folder", True)
    assert "local folder" in caplog.text


def test_missing_path_is_an_error_not_a_download(tmp_path, roots):
    with pytest.raises(ProvisionError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"), **roots)


def test_runpod_cache_snapshot_with_config(roots):
    repo = roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf"
    (repo / "snapshots" / "incomplete").mkdir(parents=True)  # no config.json: skipped
    good = _checkpoint(repo / "snapshots" / "abc123")
    _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")  # lower priority
    source = resolve_model(REPO_ID, **roots)
    assert source == ModelSource(str(good), "runpod_cache", True)


def test_runpod_cache_prefers_the_snapshot_refs_main_names(roots):
    repo = roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf"
    pinned = _checkpoint(repo / "snapshots" / "pinned")
    newer = _checkpoint(repo / "snapshots" / "newer")
    later = time.time() + 100
    os.utime(newer / "config.json", (later, later))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("pinned\n")
    assert resolve_model(REPO_ID, **roots).path_or_id == str(pinned)
    (repo / "refs" / "main").unlink()
    assert resolve_model(REPO_ID, **roots).path_or_id == str(newer)


@pytest.mark.parametrize("layout", ["vibevoice--VibeVoice-7B-hf", "vibevoice/VibeVoice-7B-hf", "VibeVoice-7B-hf"])
def test_network_volume_layouts(roots, layout):
    folder = _checkpoint(roots["volume_models_root"] / layout)
    _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    assert resolve_model(REPO_ID, **roots) == ModelSource(str(folder), "network_volume", True)


def test_volume_folder_without_config_is_skipped(roots):
    (roots["volume_models_root"] / "VibeVoice-7B-hf").mkdir(parents=True)
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    assert resolve_model(REPO_ID, **roots) == ModelSource(str(baked), "baked", True)


def test_baked_copy_when_nothing_on_the_volume(roots, caplog):
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    with caplog.at_level(logging.INFO, logger="vv_worker.provision"):
        assert resolve_model(REPO_ID, **roots) == ModelSource(str(baked), "baked", True)
    assert "baked into the image" in caplog.text


def test_hub_download_is_the_last_resort_and_warns(roots, caplog):
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        source = resolve_model(REPO_ID, **roots)
    assert source == ModelSource(REPO_ID, "hub_download", False)
    assert "slowest" in caplog.text and str(roots["baked_root"] / "VibeVoice-7B-hf") in caplog.text


def test_bare_name_found_nowhere_is_an_error(roots):
    with pytest.raises(ProvisionError, match="not a hub repo id"):
        resolve_model("VibeVoice-7B-hf", **roots)


def test_bare_name_can_still_match_a_volume_folder(roots):
    folder = _checkpoint(roots["volume_models_root"] / "my-finetune")
    assert resolve_model("my-finetune", **roots) == ModelSource(str(folder), "network_volume", True)
