"""Where the model is loaded from: every branch of resolve_model on temporary folders, and what users see."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vv_worker.provision import ModelSource, ProvisionError, looks_like_path, path_problem, resolve_model

REPO_ID = "vibevoice/VibeVoice-7B-hf"


_TINY: list[Path] = []  # the session's tiny model, set for every test below


@pytest.fixture(autouse=True)
def _tiny_model(tiny_model_dir):
    _TINY[:] = [tiny_model_dir]


def _checkpoint(folder: Path) -> Path:
    """A real checkpoint at ``folder``: the tiny model's files linked, its config.json copied (tests touch it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in _TINY[0].iterdir():
        if item.name == "config.json":
            shutil.copy(item, folder / item.name)
        else:
            (folder / item.name).symlink_to(item)
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
    assert source == ModelSource(str(folder), "local_folder")
    assert "local folder" in caplog.text


def test_missing_path_is_an_error_not_a_download(tmp_path, roots):
    with pytest.raises(ProvisionError, match="no such folder"):
        resolve_model(str(tmp_path / "nowhere"), **roots)


def test_runpod_cache_snapshot_with_config(roots):
    repo = roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf"
    (repo / "snapshots" / "incomplete").mkdir(parents=True)  # no config.json: skipped
    good = _checkpoint(repo / "snapshots" / "abc123")
    _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")  # lower priority
    source = resolve_model(REPO_ID, **roots)
    assert source == ModelSource(str(good), "runpod_cache")


def test_runpod_cache_prefers_the_snapshot_refs_main_names(roots):
    repo = roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf"
    pinned = _checkpoint(repo / "snapshots" / "pinned")
    newer = _checkpoint(repo / "snapshots" / "newer")
    later = time.time() + 100
    os.utime(newer / "config.json", (later, later))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("pinned\n")
    assert resolve_model(REPO_ID, **roots).path == str(pinned)
    (repo / "refs" / "main").unlink()
    assert resolve_model(REPO_ID, **roots).path == str(newer)


@pytest.mark.parametrize("layout", ["vibevoice--VibeVoice-7B-hf", "vibevoice/VibeVoice-7B-hf", "VibeVoice-7B-hf"])
def test_network_volume_layouts(roots, layout):
    folder = _checkpoint(roots["volume_models_root"] / layout)
    _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    assert resolve_model(REPO_ID, **roots) == ModelSource(str(folder), "network_volume")


def test_volume_folder_without_config_is_skipped(roots):
    (roots["volume_models_root"] / "VibeVoice-7B-hf").mkdir(parents=True)
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    assert resolve_model(REPO_ID, **roots) == ModelSource(str(baked), "baked")


def test_baked_copy_when_nothing_on_the_volume(roots, caplog):
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    with caplog.at_level(logging.INFO, logger="vv_worker.provision"):
        assert resolve_model(REPO_ID, **roots) == ModelSource(str(baked), "baked")
    assert "baked into the image" in caplog.text


def test_bare_name_found_nowhere_is_an_error(roots):
    with pytest.raises(ProvisionError, match="not a hub repo id"):
        resolve_model("VibeVoice-7B-hf", **roots)


def test_bare_name_can_still_match_a_volume_folder(roots):
    folder = _checkpoint(roots["volume_models_root"] / "my-finetune")
    assert resolve_model("my-finetune", **roots) == ModelSource(str(folder), "network_volume")


# --------------------------------------------------------------------------------------------- the hub


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub's three calls, answered locally; ``hub["config"]`` is the repo's config.json."""
    import huggingface_hub

    hub = {"config": {"model_type": "vibevoice", "text_config": {}}, "calls": []}

    def metadata(url, timeout=None, **kwargs):
        hub["calls"].append(("metadata", url, timeout))
        if "error" in hub:
            raise hub["error"]

    def download(repo_id, filename, revision=None, **kwargs):
        hub["calls"].append(("download", repo_id, filename, revision))
        folder = tmp_path / "hub-config"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(hub["config"]))
        return str(folder / "config.json")

    def snapshot(repo_id, revision=None, local_files_only=False, **kwargs):
        hub["calls"].append(("snapshot", repo_id, revision, local_files_only))
        if local_files_only:
            if "cached" not in hub:
                raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
            return str(hub["cached"])
        return str(_checkpoint(tmp_path / "hf-cache" / repo_id.replace("/", "--")))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    for name in ("RUNPOD_ENDPOINT_ID", "RUNPOD_POD_ID", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return hub


def test_hub_download_is_the_last_resort_at_the_revision(roots, fake_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        source = resolve_model(REPO_ID, revision="v1.0", **roots)
    assert source.source == "hub_download" and source.path.endswith("vibevoice--VibeVoice-7B-hf")
    assert ("download", REPO_ID, "config.json", "v1.0") in fake_hub["calls"]
    assert ("snapshot", REPO_ID, "v1.0", False) in fake_hub["calls"]
    assert "fetching vibevoice/VibeVoice-7B-hf@v1.0" in caplog.text
    assert "RunPod" not in caplog.text  # off RunPod, RunPod's model cache means nothing


def test_hub_download_on_runpod_says_how_to_start_faster(roots, fake_hub, caplog, monkeypatch):
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "abc")
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        resolve_model(REPO_ID, **roots)
    assert "slowest" in caplog.text and "RunPod's model cache" in caplog.text
    assert str(roots["baked_root"] / "VibeVoice-7B-hf") in caplog.text


def test_original_format_hub_repo_stops_before_the_download(roots, fake_hub):
    fake_hub["config"] = {"model_type": "vibevoice", "decoder_config": {}, "acoustic_tokenizer_config": {}}
    with pytest.raises(ProvisionError, match="aoi-ot/VibeVoice-Large is an original-format") as raised:
        resolve_model("aoi-ot/VibeVoice-Large", **roots)
    assert "scripts/convert_checkpoint.py aoi-ot/VibeVoice-Large" in str(raised.value)
    assert not any(call[0] == "snapshot" for call in fake_hub["calls"])


def test_unreachable_hub_uses_the_cached_copy(roots, fake_hub, tmp_path, caplog):
    fake_hub["error"] = ConnectionError("connection refused")
    fake_hub["cached"] = _checkpoint(tmp_path / "cached-snapshot")
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        source = resolve_model(REPO_ID, **roots)
    assert source == ModelSource(str(fake_hub["cached"]), "hub_download")
    assert "cannot be reached" in caplog.text


def test_unreachable_hub_without_a_cached_copy_names_the_fixes(roots, fake_hub):
    fake_hub["error"] = ConnectionError("connection refused")
    with pytest.raises(ProvisionError) as raised:
        resolve_model(REPO_ID, **roots)
    message = str(raised.value)
    assert "the hub cannot be reached" in message and "connection refused" in message
    assert "--model PATH" in message and "VV_MODEL=PATH" in message and "scripts/make_tiny_model.py" in message
    assert "/runpod-volume" not in message  # where it looked on RunPod is noise elsewhere
    metadata_calls = [call for call in fake_hub["calls"] if call[0] == "metadata"]
    assert len(metadata_calls) == 1 and metadata_calls[0][2] <= 10  # one short request, no retries


def test_hub_answers_become_messages(roots, fake_hub):
    from types import SimpleNamespace

    from huggingface_hub import errors

    response = SimpleNamespace(status_code=404, headers={}, request=None)  # all the errors read of a response
    fake_hub["error"] = errors.RevisionNotFoundError("Revision Not Found", response=response)
    with pytest.raises(ProvisionError, match=r"no revision 'nope'.*VV_MODEL_REVISION"):
        resolve_model(REPO_ID, revision="nope", **roots)
    fake_hub["error"] = errors.RepositoryNotFoundError("Repository Not Found", response=response)
    with pytest.raises(ProvisionError, match="the hub has no repo org/missing"):
        resolve_model("org/missing", **roots)


# ----------------------------------------------------------------------------------- the revision


def _record_commit(folder, commit):
    record = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
    record.parent.mkdir(parents=True)
    record.write_text(f'{commit}\n"etag"\n1700000000.0\n')


COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def test_revision_picks_the_runpod_cache_snapshot(roots):
    repo = roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf"
    first = _checkpoint(repo / "snapshots" / COMMIT_A)
    second = _checkpoint(repo / "snapshots" / COMMIT_B)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_B)
    (repo / "refs" / "v1").write_text(COMMIT_A)
    assert resolve_model(REPO_ID, **roots).path == str(second)
    assert resolve_model(REPO_ID, revision=COMMIT_A, **roots).path == str(first)
    assert resolve_model(REPO_ID, revision="aaaaaaa", **roots).path == str(first)  # a short hash
    assert resolve_model(REPO_ID, revision="v1", **roots).path == str(first)  # a tag, through refs/


def test_revision_not_in_the_runpod_cache_falls_through(roots):
    _checkpoint(roots["runpod_cache_root"] / "models--vibevoice--VibeVoice-7B-hf" / "snapshots" / COMMIT_A)
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    assert resolve_model(REPO_ID, revision=COMMIT_B, **roots) == ModelSource(str(baked), "baked")


def test_revision_skips_a_volume_copy_of_another_commit(roots, caplog):
    volume = _checkpoint(roots["volume_models_root"] / "VibeVoice-7B-hf")
    _record_commit(volume, COMMIT_A)
    baked = _checkpoint(roots["baked_root"] / "VibeVoice-7B-hf")
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        assert resolve_model(REPO_ID, revision=COMMIT_B, **roots).path == str(baked)
    assert f"it holds commit {COMMIT_A}" in caplog.text
    assert resolve_model(REPO_ID, revision=COMMIT_A[:12], **roots).path == str(volume)


def test_revision_of_a_local_folder(tmp_path, roots, caplog):
    folder = _checkpoint(tmp_path / "mine")
    with caplog.at_level(logging.WARNING, logger="vv_worker.provision"):
        assert resolve_model(str(folder), revision=COMMIT_A, **roots).path == str(folder)
    assert "cannot be checked" in caplog.text  # nothing recorded: used, and said so
    _record_commit(folder, COMMIT_B)
    with pytest.raises(ProvisionError, match=f"holds commit {COMMIT_B}, not VV_MODEL_REVISION={COMMIT_A}"):
        resolve_model(str(folder), revision=COMMIT_A, **roots)


def test_revision_setting_reaches_the_provisioning(monkeypatch):
    import vv_worker.provision as provision
    from vv_worker.config import ConfigError, load_settings
    from vv_worker.service import SynthesisService

    seen = {}

    def fake_resolve(model, revision=None, **kwargs):
        seen.update(model=model, revision=revision)
        raise ProvisionError("stop here")

    monkeypatch.setattr(provision, "resolve_model", fake_resolve)
    monkeypatch.setenv("VV_MODEL_REVISION", COMMIT_A)
    with pytest.raises(ProvisionError, match="stop here"):
        SynthesisService.from_settings(load_settings(model="org/name"))
    assert seen == {"model": "org/name", "revision": COMMIT_A}
    monkeypatch.setenv("VV_MODEL_REVISION", "has space")
    with pytest.raises(ConfigError, match="VV_MODEL_REVISION"):
        load_settings()


# ------------------------------------------------------------------------------ folders and weights


def test_path_like_names_are_never_hub_ids(tmp_path, monkeypatch, roots):
    monkeypatch.chdir(tmp_path)
    _checkpoint(tmp_path / "models" / "tiny")
    assert looks_like_path("models/tinyy") and not looks_like_path("vibevoice/VibeVoice-7B-hf")
    with pytest.raises(ProvisionError, match=r"no such folder models/tinyy \(did you mean models/tiny\?\)"):
        resolve_model("models/tinyy", **roots)
    assert path_problem("models/tiny") is None and path_problem("org/name") is None


def test_original_format_folder_is_refused(tmp_path, roots):
    folder = tmp_path / "VibeVoice-1.5B"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "vibevoice", "decoder_config": {}}')
    with pytest.raises(ProvisionError, match="original-format") as raised:
        resolve_model(str(folder), **roots)
    assert f"convert_checkpoint.py {folder} models/VibeVoice-1.5B-hf" in str(raised.value)


def test_truncated_weights_are_refused_before_loading(tiny_model_dir, tmp_path, roots):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ProvisionError, match=r"truncated shard model\.safetensors"):
        resolve_model(str(copy), **roots)


# -------------------------------------------------------------------- what a newcomer runs (subprocesses)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(module_args: list[str], env: dict[str, str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", *module_args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - started


@pytest.fixture
def offline_env(subprocess_env, tmp_path):
    """No VV_MODEL, an empty Hugging Face cache, and a hub address where nothing listens."""
    env = {k: v for k, v in subprocess_env.items() if k not in ("VV_MODEL", "HF_HUB_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    return env


@pytest.mark.parametrize(
    "command",
    [["vv_worker.local", "--text", "Hello"], ["vv_worker.handler", "--test_input", '{"input": {"text": "Hello"}}']],
)
def test_default_model_offline_fails_in_seconds_naming_the_fixes(offline_env, tmp_path, command):
    done, seconds = _run(command, offline_env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert seconds < 30  # it took about 150 s of hub retries
    assert "the hub cannot be reached" in done.stderr
    assert "--model PATH" in done.stderr and "VV_MODEL=PATH" in done.stderr and "make_tiny_model.py" in done.stderr
    assert "Retrying" not in output and "RunPod" not in output and "Traceback" not in output


@pytest.mark.parametrize("module", ["vv_worker.handler", "vv_worker.local"])
def test_help_prints_without_loading_the_model(subprocess_env, tmp_path, module):
    env = dict(subprocess_env, VV_MODEL=str(tmp_path / "no-such-model"))  # any load would fail on this
    done, seconds = _run([module, "--help"], env, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and ("--test_input" in done.stdout or "--text" in done.stdout)
    assert "no-such-model" not in done.stdout + done.stderr
    assert seconds < 30


def test_mistyped_model_folder_fails_at_once_naming_the_option(subprocess_env, tiny_model_dir, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_model_dir)
    local, seconds = _run(["vv_worker.local", "--text", "Hi", "--model", "models/tinyy"], subprocess_env, tmp_path)
    assert local.returncode == 2 and seconds < 30
    assert "--model models/tinyy: no such folder models/tinyy (did you mean models/tiny?)" in local.stderr
    assert "VV_MODEL" not in local.stderr and "Traceback" not in local.stderr
    env = dict(subprocess_env, VV_MODEL="models/tinyy")
    worker, seconds = _run(["vv_worker.handler", "--test_input", '{"input": {"text": "Hi"}}'], env, tmp_path)
    assert worker.returncode == 2 and seconds < 30
    assert "VV_MODEL='models/tinyy': no such folder" in worker.stderr and "Traceback" not in worker.stderr


def test_truncated_weights_give_a_message_not_a_traceback(subprocess_env, tiny_model_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    done, _ = _run(["vv_worker.local", "--text", "Hi", "--model", str(copy)], subprocess_env, tmp_path)
    assert done.returncode == 2
    assert "truncated shard model.safetensors" in done.stderr and "Traceback" not in done.stderr


def test_weights_that_do_not_fit_the_config_are_refused(tiny_model_dir, tmp_path):
    """transformers would load them, initialise the mismatched layers at random and only log it."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 16
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ProvisionError, match=r"6 tensor\(s\) have another shape than config.json implies"):
        resolve_model(str(copy))


def test_a_load_failure_is_an_engine_error_not_a_traceback(tiny_model_dir, tmp_path, empty_voices_dir):
    """A tokenizer.json without a model makes the tokenizers library raise a bare Exception."""
    from vv_worker.config import load_settings
    from vv_worker.engine.base import EngineError
    from vv_worker.engine.reference import ReferenceEngine

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "tokenizer.json").write_text('{"version": "1.0", "added_tokens": []}')
    settings = load_settings(model=str(copy), voices_dir=empty_voices_dir)
    with pytest.raises(EngineError, match=r"could not load the VibeVoice checkpoint .*: Exception: Model missing"):
        ReferenceEngine.load(settings, path=resolve_model(str(copy)).path)
