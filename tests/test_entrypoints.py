"""The three ways people run the worker, each as a real subprocess on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import soundfile as sf
from conftest import api_server, decode_wav

from vv_worker.engine import SAMPLES_PER_FRAME


def run_module(*args: str, env: dict[str, str], cwd, timeout: int) -> subprocess.CompletedProcess:
    """``python -m <args>`` with captured text output."""
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_local_cli_writes_a_playable_wav(subprocess_env, tmp_path):
    out = tmp_path / "nested" / "hello.wav"
    done = run_module(
        "vv_worker.local",
        "--text",
        "Hello from the command line.",
        "--seed",
        "4",
        "--out",
        str(out),
        env=subprocess_env,
        cwd=tmp_path,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert info.frames > 0 and info.frames % SAMPLES_PER_FRAME == 0
    assert f"wrote {out}" in done.stdout
    assert "real-time factor" in done.stdout and f"{info.frames / 24000:.2f} s of audio" in done.stdout
    assert "generating" in done.stderr  # the progress bar


def test_local_cli_reports_bad_input_without_a_traceback(subprocess_env, tmp_path):
    done = run_module("vv_worker.local", "--text", "Hi", "--speed", "9", env=subprocess_env, cwd=tmp_path, timeout=180)
    assert done.returncode == 2
    assert "voice_settings.speed" in done.stderr and "Traceback" not in done.stderr


def test_handler_test_input_mode(subprocess_env, tmp_path):
    job = {"input": {"text": "Testing the test input mode.", "seed": 2}}
    done = run_module(
        "vv_worker.handler", "--test_input", json.dumps(job), env=subprocess_env, cwd=tmp_path, timeout=180
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Job local_test completed successfully." in done.stdout


def test_handler_test_input_mode_fails_cleanly_on_bad_input(subprocess_env, tmp_path):
    job = {"input": {"text": "", "seed": 2}}
    done = run_module(
        "vv_worker.handler", "--test_input", json.dumps(job), env=subprocess_env, cwd=tmp_path, timeout=180
    )
    assert done.returncode == 1
    assert "text: text is empty" in done.stdout


def test_bad_setting_stops_the_worker_with_the_variable_name(subprocess_env, tmp_path):
    env = dict(subprocess_env, VV_DIFFUSION_STEPS="500")
    done = run_module(
        "vv_worker.handler", "--test_input", '{"input": {"text": "x"}}', env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2
    assert "VV_DIFFUSION_STEPS" in done.stderr and "Traceback" not in done.stderr


def test_local_api_server_answers_runsync_over_http(subprocess_env, tmp_path):
    with api_server(subprocess_env, tmp_path) as base:

        def runsync(payload: dict) -> dict:
            request = urllib.request.Request(
                f"{base}/runsync",
                data=json.dumps({"input": payload}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.load(response)

        body = runsync({"text": "Hello over HTTP.", "seed": 8})
        assert body["status"] == "COMPLETED", body
        samples, rate, _ = decode_wav(body["output"]["audio_b64"])
        assert rate == 24000 and samples.size == body["output"]["metrics"]["frames"] * SAMPLES_PER_FRAME

        failed = runsync({"text": "hi", "seed": "eight"})
        assert "seed: Input should be a valid integer" in json.dumps(failed)

        again = runsync({"text": "Hello over HTTP.", "seed": 8})
        assert again["output"]["audio_b64"] == body["output"]["audio_b64"]
