"""Faults: time limits, out-of-memory, device faults, leftovers and logs. The worker must carry on."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile

import pytest
import torch
from conftest import speechlike, wav_base64

from vv_worker import handler as handler_module
from vv_worker.engine import GenerationJob
from vv_worker.engine.base import JobStopped
from vv_worker.handler import handle_job
from vv_worker.joblog import install_json_handler
from vv_worker.prompt import parse_script


def run(service, **payload) -> dict:
    return handle_job({"id": "fault", "input": payload}, service)


@pytest.mark.parametrize("which", ["fast", "reference"])
def test_should_stop_ends_generation_between_steps(service, reference_engine, which):
    engine = service.engine if which == "fast" else reference_engine
    calls = {"n": 0}

    def stop_after_three() -> str | None:
        calls["n"] += 1
        return "stopped for the test" if calls["n"] >= 3 else None

    frames_seen = []
    job = GenerationJob(parse_script("Stop me.").lines, {}, 1, 1.3, 10, max_frames=40, should_stop=stop_after_three)
    with pytest.raises(JobStopped, match="stopped for the test"):
        engine.generate(job, on_progress=lambda done, cap: frames_seen.append(done))
    assert frames_seen and max(frames_seen) == 3  # three steps ran, not the forty allowed


def test_job_timeout_is_a_clean_error_and_the_next_job_runs(service, monkeypatch):
    monkeypatch.setattr(service.settings, "job_timeout", 1e-6)
    out = run(service, text="Too slow for this limit.", seed=1)
    assert out == {
        "error": "the job ran longer than its time limit of 1e-06 s (VV_JOB_TIMEOUT) and was stopped",
    }
    monkeypatch.undo()
    assert "audio_b64" in run(service, text="Now in time.", seed=1)


def test_out_of_memory_is_a_clean_error_and_the_engine_stays_usable(service, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(service.engine, "generate", oom)
    out = run(service, text="Out of memory.", seed=1)
    assert out == {"error": "the GPU ran out of memory for this request; try a shorter text"}
    monkeypatch.undo()
    assert "audio_b64" in run(service, text="After the out-of-memory.", seed=1)


def test_a_device_fault_asks_runpod_to_replace_the_worker(service, monkeypatch):
    def fault(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(service.engine, "generate", fault)
    out = run(service, text="Device fault.", seed=1)
    assert out["refresh_worker"] is True
    assert out["error"].startswith("internal error during synthesis (RuntimeError): CUDA error")
    assert out["error"].endswith("this worker is being replaced")
    other = RuntimeError("shape mismatch")
    assert not handler_module.device_may_be_corrupted(other)


def test_no_temporary_files_are_left_by_any_job(service, monkeypatch, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    reference = wav_base64(speechlike(1.5), 24000)
    payloads = [
        {"text": "A good one.", "seed": 1, "reference_audio": reference, "output_format": "mp3"},
        {"text": "Another.", "output_format": "ogg", "normalize": -20.0, "voice_settings": {"speed": 1.5}},
        {"text": "Bad reference.", "reference_audio": "aGVsbG8="},
        {"text": ""},
        {"text": "Over the inline limit.", "seed": 1},
    ]
    monkeypatch.setattr(service.settings, "max_inline_bytes", 2000)
    for payload in payloads:
        run(service, **payload)
    assert sorted(os.listdir(scratch)) == []


def test_job_logs_are_json_lines_without_audio_text_or_secrets(service, monkeypatch):
    stream = io.StringIO()
    install_json_handler(stream)
    monkeypatch.setattr(handler_module, "_service", service)
    reference = wav_base64(speechlike(1.5), 24000)
    secret_text = "My password is hunter2 and my token hf_abcdefghijklmnop"
    good = asyncio.run(
        handler_module.handler({"id": "job-1", "input": {"text": secret_text, "reference_audio": reference, "seed": 3}})
    )
    bad = asyncio.run(handler_module.handler({"id": "job-2", "input": {"text": "x", "seed": "NaN"}}))
    assert "audio_b64" in good and "error" in bad
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["job_id"]) for line in lines] == [
        ("received", "job-1"),
        ("started", "job-1"),
        ("finished", "job-1"),
        ("received", "job-2"),
        ("started", "job-2"),
        ("failed", "job-2"),
    ]
    finished = lines[2]
    assert lines[0]["text_length"] == len(secret_text)
    assert finished["frames"] > 0 and finished["real_time_factor"] > 0
    assert lines[0]["voice_source"] == "reference_audio"
    raw = stream.getvalue()
    for leaked in ("hunter2", "hf_abcdefghijklmnop", reference[:80], good["audio_b64"][:80]):
        assert leaked not in raw
