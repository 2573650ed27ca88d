"""vv_worker.client: over real HTTP against the SDK's local API server (tiny model), and against a loopback
stand-in for RunPod's cloud API that follows its documented contract (Bearer auth, GET status and stream)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile as sf
from conftest import api_server, decode_wav, speechlike

from vv_worker.client import ClientError, JobFailed, RunPodClient, main, save_audio, save_stream
from vv_worker.engine import SAMPLES_PER_FRAME

API_KEY = "rpa_" + "K3y" * 12
ENDPOINT = "ep123"


def _wav_b64(seconds: float, value: float = 0.1, rate: int = 24000) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, np.full(int(seconds * rate), value, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


# --------------------------------------------------------------- fake cloud API


class FakeRunPod:
    """RunPod's queue API for one endpoint: /run, /runsync, /status, /stream, /cancel under /v2/{endpoint}."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []

    def output(self, job_input):
        return {
            "audio_b64": _wav_b64(0.5),
            "duration_seconds": 0.5,
            "voice_used": job_input.get("voice"),
            "seed_used": 1,
        }

    def handle(self, method, path, query, body, auth):
        self.requests.append((method, path, query))
        if auth != f"Bearer {API_KEY}":
            return 401, {"error": "Unauthorized"}
        prefix = f"/v2/{ENDPOINT}"
        if not path.startswith(prefix + "/"):
            return 404, {"error": "no such endpoint"}
        route = path[len(prefix) :]
        if method == "POST" and route in ("/run", "/runsync"):
            job_id = f"job-{uuid.uuid4().hex[:8]}"
            text = body["input"]["text"]
            self.jobs[job_id] = {"input": body["input"], "polls": 0, "streamed": 0}
            if route == "/runsync" and text != "slow":
                return 200, self.final(job_id)
            return 200, {"id": job_id, "status": "IN_QUEUE"}
        parts = route.strip("/").split("/")
        if len(parts) != 2 or parts[1] not in self.jobs:
            return 404, {"error": "job not found"}
        operation, job_id = parts
        job = self.jobs[job_id]
        if operation == "status" and method == "GET":
            job["polls"] += 1
            if job["polls"] < 3:
                return 200, {"id": job_id, "status": ["IN_QUEUE", "IN_PROGRESS"][job["polls"] - 1]}
            return 200, self.final(job_id)
        if operation == "stream" and method == "GET":
            job["streamed"] += 1
            stream = {
                1: [{"output": {"audio_b64": _wav_b64(0.2, 0.1)}}],
                2: [],
                3: [{"output": {"audio_b64": _wav_b64(0.3, 0.2)}}, {"output": {"finished": True}}],
            }[min(job["streamed"], 3)]
            status = "COMPLETED" if job["streamed"] >= 3 else "IN_PROGRESS"
            if job["input"]["text"] == "fail":
                return 200, {"status": "FAILED", "stream": [], "error": "worker exploded"}
            return 200, {"status": status, "stream": stream}
        if operation == "cancel" and method == "POST":
            return 200, {"id": job_id, "status": "CANCELLED"}
        return 405, {"error": "method not allowed"}

    def final(self, job_id):
        job_input = self.jobs[job_id]["input"]
        if job_input["text"] == "fail":
            return {"id": job_id, "status": "FAILED", "error": "text: the worker refused it"}
        return {"id": job_id, "status": "COMPLETED", "output": self.output(job_input), "executionTime": 10}


@pytest.fixture
def cloud():
    fake = FakeRunPod()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self):
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            code, answer = fake.handle(
                self.command, split.path, parse_qs(split.query), body, self.headers.get("Authorization")
            )
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v2"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def _client(cloud, key=API_KEY):
    return RunPodClient(ENDPOINT, api_key=key, base_url=cloud.base_url, poll_interval_s=0.01)


def test_cloud_runsync(cloud):
    output = _client(cloud).synthesize({"text": "Hello", "voice": "alice"}, mode="runsync")
    assert output["voice_used"] == "alice" and base64.b64decode(output["audio_b64"])[:4] == b"RIFF"
    assert cloud.requests[0][:2] == ("POST", f"/v2/{ENDPOINT}/runsync")


def test_cloud_runsync_that_outlives_the_wait_falls_back_to_polling(cloud):
    job = _client(cloud).runsync({"text": "slow"}, wait_ms=5000)
    assert job["status"] == "COMPLETED"
    assert cloud.requests[0][2] == {"wait": ["5000"]}
    assert [m for m, p, _ in cloud.requests[1:]] == ["GET", "GET", "GET"]
    assert all("/status/" in p for _, p, _ in cloud.requests[1:])


def test_cloud_run_and_status_polling(cloud):
    client = _client(cloud)
    job_id = client.run({"text": "Hello"})
    seen = []
    job = client.wait(job_id, on_status=lambda j: seen.append(j["status"]))
    assert seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"] and job["output"]["duration_seconds"] == 0.5
    assert client.cancel(job_id)["status"] == "CANCELLED"


def test_cloud_stream_yields_chunks_in_order(cloud, tmp_path):
    client = _client(cloud)
    chunks = list(client.stream(client.run({"text": "Hello"})))
    assert len(chunks) == 3 and chunks[-1] == {"finished": True}
    path = save_stream(chunks, tmp_path / "streamed.wav")
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == 24000 and samples.size == int(0.5 * 24000)
    assert abs(samples[0] - 0.1) < 1e-3 and abs(samples[-1] - 0.2) < 1e-3


def test_cloud_failures(cloud):
    client = _client(cloud)
    with pytest.raises(JobFailed, match="the worker refused it"):
        client.synthesize({"text": "fail"}, mode="run")
    with pytest.raises(JobFailed, match="worker exploded"):
        list(client.stream(client.run({"text": "fail"})))
    with pytest.raises(ClientError, match="API key was refused") as refused:
        _client(cloud, key="rpa_wrong").run({"text": "x"})
    assert "rpa_wrong" not in str(refused.value)
    with pytest.raises(ClientError, match="RUNPOD_API_KEY"):
        RunPodClient(ENDPOINT, api_key=None)
    assert API_KEY not in repr(client)


def test_cloud_cli_never_prints_the_key(cloud, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    out = tmp_path / "cli.wav"
    argv = ["--endpoint", ENDPOINT, "--base-url", cloud.base_url, "--text", "Hi", "--out", str(out)]
    assert main([*argv, "--seed", "3", "--voice", "alice", "--mode", "run", "--poll-interval", "0.01"]) == 0
    assert sf.info(str(out)).samplerate == 24000
    assert main([*argv, "--mode", "stream", "--poll-interval", "0.01"]) == 0
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_wrong_key_value")
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert "API key was refused" in printed.err
    assert API_KEY not in printed.out + printed.err and "rpa_wrong_key_value" not in printed.out + printed.err


def test_save_audio_requires_audio(tmp_path):
    with pytest.raises(ClientError, match="neither audio_b64 nor audio_url"):
        save_audio({"error": "x"}, tmp_path / "a.wav")


# --------------------------------------------------------- real local API server


@pytest.fixture(scope="module")
def local_server(subprocess_env, tmp_path_factory):
    with api_server(subprocess_env, tmp_path_factory.mktemp("api")) as base:
        yield base


def test_local_runsync(local_server):
    client = RunPodClient(local_url=local_server, timeout_s=120)
    output = client.synthesize({"text": "Hello from the client.", "seed": 5}, mode="runsync")
    samples, rate, _ = decode_wav(output["audio_b64"])
    assert rate == 24000 and samples.size == output["metrics"]["frames"] * SAMPLES_PER_FRAME
    with pytest.raises(JobFailed, match="seed: Input should be a valid integer"):
        client.synthesize({"text": "hi", "seed": "five"}, mode="runsync")


def test_local_run_then_status_via_the_cli(local_server, tmp_path, capsys):
    out = tmp_path / "local.wav"
    code = main(["--local", local_server, "--text", "Queued job.", "--seed", "5", "--mode", "run", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"wrote {out}" in printed.out
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.frames > 0 and info.frames % SAMPLES_PER_FRAME == 0


def test_local_stream_on_a_non_streaming_endpoint_names_the_fix(local_server, capsys):
    # Without VV_STREAMING the handler is not a generator, so the SDK's local /stream refuses it
    # (the streaming endpoint is tested in test_streaming.py).
    client = RunPodClient(local_url=local_server, timeout_s=120)
    with pytest.raises(JobFailed, match=r"Stream not supported.*set VV_STREAMING=true on it"):
        list(client.stream(client.run({"text": "Stream me.", "seed": 1})))
    assert main(["--local", local_server, "--text", "Stream me.", "--mode", "stream", "--out", "x.wav"]) == 1
    assert "VV_STREAMING=true" in capsys.readouterr().err


def test_the_client_runs_on_the_sdks_endpoint_and_job(cloud, local_server):
    import runpod

    cloud_client = _client(cloud)
    assert isinstance(cloud_client.endpoint, runpod.Endpoint)
    job = cloud_client.run({"text": "Hello"})
    assert isinstance(job, runpod.endpoint.Job) and job.status() == "IN_QUEUE"  # the SDK's own Job.status
    local = RunPodClient(local_url=local_server, timeout_s=120)
    assert isinstance(local.endpoint, runpod.Endpoint) and isinstance(local.run({"text": "Hi."}), runpod.endpoint.Job)


def test_out_extension_picks_the_format_and_a_contradiction_is_refused(local_server, tmp_path, capsys):
    out = tmp_path / "hello.mp3"
    assert main(["--local", local_server, "--text", "Hello in MP3.", "--seed", "2", "--out", str(out)]) == 0
    assert sf.info(str(out)).format == "MP3"  # not WAV bytes under an .mp3 name
    opus = tmp_path / "hello.opus"
    assert main(["--local", local_server, "--text", "Hi.", "--format", "ogg", "--out", str(opus)]) == 0
    assert sf.info(str(opus)).format == "OGG"
    capsys.readouterr()
    assert main(["--local", local_server, "--text", "Hi.", "--format", "flac", "--out", str(out)]) == 1
    assert "--out " + str(out) + " names mp3 but --format is flac" in capsys.readouterr().err
    assert main(["--local", local_server, "--text", "Hi.", "--out", str(tmp_path / "x.bin")]) == 1
    assert "cannot tell the format from '.bin'; give --format" in capsys.readouterr().err
    with pytest.raises(ClientError, match="asked for mp3 but the worker returned wav"):
        save_audio({"format": "wav", "audio_b64": _wav_b64(0.1)}, tmp_path / "y.mp3", expected_format="mp3")


def test_reference_and_speaker_options_reach_the_worker(local_server, tmp_path, capsys):
    from vv_worker.client import _parser, build_input

    reference = tmp_path / "me.wav"
    sf.write(reference, speechlike(2.0), 24000, subtype="PCM_16")
    script = "Speaker 1: Hello.\nSpeaker 2: Hi there."
    argv = ["--local", local_server, "--text", script, "--reference", str(reference), "--speaker", f"2={reference}"]
    job_input, _ = build_input(_parser().parse_args(argv))
    output = RunPodClient(local_url=local_server, timeout_s=120).synthesize({**job_input, "seed": 3})
    assert output["speakers_used"] == {"1": "reference_audio", "2": "reference_audio"}
    out = tmp_path / "ref.wav"
    assert main(["--local", local_server, "--text", "Hi.", "--reference", str(reference), "--out", str(out)]) == 0
    assert "voice reference_audio" in capsys.readouterr().out
    assert main(["--local", local_server, "--text", "Hi.", "--reference", str(tmp_path / "missing.wav")]) == 1
    assert "--reference " in capsys.readouterr().err
    assert main(["--local", local_server, "--text", "Hi.", "--speaker", "1"]) == 1
    assert "expected N=VOICE" in capsys.readouterr().err
