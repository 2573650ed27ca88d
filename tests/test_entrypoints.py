"""The three ways people run the worker, each as a real subprocess on the tiny model."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
from api_server import free_port
from conftest import REPO, api_server, decode_wav, speechlike

from vv_worker.engine import SAMPLES_PER_FRAME


def run_module(*args: str, env: dict[str, str], cwd, timeout: int) -> subprocess.CompletedProcess:
    """``python -m <args>`` with captured text output."""
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def loaded_model(done: subprocess.CompletedProcess) -> bool:
    """Whether the CLI got as far as loading the model (it says so on a line of its own)."""
    return any(line.startswith("loading ") for line in done.stderr.splitlines())


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


# --- first contact: the local CLI ------------------------------------------------------------------------


def test_local_cli_checks_the_request_before_loading_the_model(subprocess_env, tmp_path):
    for text, expected in (
        ("", "text: text is empty"),
        ("Speaker 0: Hi.\\nSpeaker 1: Hello.", "literal backslash-n"),  # \n typed in a shell: two characters
    ):
        done = run_module("vv_worker.local", "--text", text, env=subprocess_env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert not loaded_model(done) and "Traceback" not in done.stderr


def test_local_cli_refuses_an_out_extension_that_contradicts_the_format(subprocess_env, tmp_path):
    argv = ("vv_worker.local", "--text", "Hi.", "--out", "x.mp3", "--format", "wav")
    done = run_module(*argv, env=subprocess_env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--out x.mp3 names mp3 but --format is wav" in done.stderr
    assert not loaded_model(done)


def test_bad_thread_setting_is_refused_with_its_name(subprocess_env, tmp_path):
    done = run_module(
        "vv_worker.local", "--text", "Hi.", env=dict(subprocess_env, VV_CPU_THREADS="0"), cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2 and "VV_CPU_THREADS" in done.stderr and "Traceback" not in done.stderr


def test_auto_cpu_threads_is_half_the_usable_cpus_within_bounds():
    from vv_worker.config import cpu_thread_count, usable_cpus

    assert cpu_thread_count("auto") == max(1, min(8, usable_cpus() // 2))
    assert cpu_thread_count("3") == 3
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


@pytest.fixture
def voice_host(tmp_path):
    """A loopback HTTP server holding one recording, and a voice folder whose manifest points at it."""
    recording = tmp_path / "served" / "alice.wav"
    recording.parent.mkdir()
    sf.write(recording, speechlike(2.0), 24000, subtype="PCM_16")
    data = recording.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def library(url: str) -> Path:
        folder = tmp_path / "voices"
        folder.mkdir(exist_ok=True)
        entry = {"name": "alice", "file": "en-Alice_woman.wav", "url": url, "sha256": hashlib.sha256(data).hexdigest()}
        entry |= {"license": "MIT", "language": "en", "gender": "female", "description": "test"}
        (folder / "manifest.json").write_text(json.dumps({"voices": [entry]}))
        return folder

    yield f"http://127.0.0.1:{httpd.server_address[1]}/alice.wav", library, data
    httpd.shutdown()
    httpd.server_close()


def test_local_cli_fetches_a_missing_library_voice_on_first_use(subprocess_env, tmp_path, voice_host):
    url, library, data = voice_host
    folder = library(url)
    env = dict(subprocess_env, VV_VOICES_DIR=str(folder))
    out = tmp_path / "hello.mp3"
    argv = ("--text", "Hello.", "--voice", "alice", "--seed", "1", "--threads", "1", "--out", str(out))
    done = run_module("vv_worker.local", *argv, env=env, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert (folder / "en-Alice_woman.wav").read_bytes() == data
    assert "downloading en-Alice_woman.wav" in done.stderr and "voice alice" in done.stdout
    assert "(1 CPU thread)" in done.stderr
    assert sf.info(str(out)).format == "MP3"  # the format follows --out's extension


def test_local_cli_offline_names_the_folder_and_the_fix(subprocess_env, tmp_path, voice_host):
    _, library, _ = voice_host
    folder = library(f"http://127.0.0.1:{free_port()}/gone.wav")  # nothing listens there
    env = dict(subprocess_env, VV_VOICES_DIR=str(folder))
    done = run_module("vv_worker.local", "--text", "Hi.", "--voice", "alice", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"is not in {folder.resolve()}" in done.stderr and f"fetch_voices.py --dir {folder}" in done.stderr
    assert not loaded_model(done) and "Traceback" not in done.stderr


def test_local_cli_without_a_library_folder_says_where_it_looked(subprocess_env, tmp_path):
    env = dict(subprocess_env, VV_VOICES_DIR="no-such-voices")
    done = run_module("vv_worker.local", "--text", "Hi.", "--voice", "alice", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert f"no voice library at {tmp_path / 'no-such-voices'}" in done.stderr and "VV_VOICES_DIR" in done.stderr


# --- set-up ----------------------------------------------------------------------------------------------


def _setup_dry_run(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """scripts/setup.sh printing its commands, with a python that has no torch (so torch gets installed)."""
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        env={**os.environ, "VV_SETUP_DRY_RUN": "1", "PYTHON": str(no_torch), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_installs_torch_from_a_given_index_and_says_what_pypi_gives(tmp_path):
    cpu = _setup_dry_run(tmp_path, TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert cpu.returncode == 0, cpu.stderr
    assert "pip install --quiet --index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in cpu.stdout
    default = _setup_dry_run(tmp_path, TORCH_INDEX_URL="")
    assert default.returncode == 0, default.stderr
    assert "pip install --quiet torch==2.13.0" in default.stdout and "--index-url" not in default.stdout
    assert "the CUDA build" in default.stdout
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in default.stdout
    assert "pip install --quiet -e .\\[dev\\]" in default.stdout  # then the package, as before
