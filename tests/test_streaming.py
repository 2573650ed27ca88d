"""Streaming on queue endpoints: grouped chunks, run-ahead, the SDK's per-job loop (aggregate, FAILED, refresh)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile as sf
from conftest import api_server

from vv_worker import handler as worker
from vv_worker.ahead import RunAhead
from vv_worker.engine import SAMPLES_PER_FRAME
from vv_worker.handler import handle_job, stream_job

RUNPOD_STREAM_ITEM_LIMIT = 1_000_000  # RunPod refuses streamed items over 1 MB
FRAMES_PER_GROUP = -(-24000 // SAMPLES_PER_FRAME)  # frames in one ~1 s chunk: ceil(24000 / 3200) = 8
LONG = {"text": "A longer sentence so the stream has several grouped chunks of audio in it. " * 2, "seed": 3}


def pcm(chunks: list[dict]) -> np.ndarray:
    return np.concatenate([np.frombuffer(base64.b64decode(c["audio_b64"]), dtype="<i2") for c in chunks])


def assert_same_audio(a: np.ndarray, b: np.ndarray) -> None:
    """Two generations of one request: the same samples, but for float rounding when they shared a batch."""
    assert a.shape == b.shape
    np.testing.assert_allclose(a.astype(int), b.astype(int), rtol=0, atol=4)


def wav_pcm(audio_b64: str) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(audio_b64)), dtype="int16")
    assert rate == 24000
    return samples


def test_stream_groups_chunks_first_at_once_then_about_a_second(service):
    items = list(stream_job({"id": "s", "input": {**LONG, "stream": True}}, service))
    chunks, summary = items[:-1], items[-1]
    frames = summary["metrics"]["frames"]
    assert frames > 1 + FRAMES_PER_GROUP  # the text makes at least three groups
    assert summary["done"] is True and summary["chunks"] == len(chunks) == 1 + -(-(frames - 1) // FRAMES_PER_GROUP)
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    sizes = [c["samples"] for c in chunks]
    assert sizes[0] == SAMPLES_PER_FRAME  # the first frame leaves as soon as it exists
    assert all(size == FRAMES_PER_GROUP * SAMPLES_PER_FRAME for size in sizes[1:-1])
    assert 0 < sizes[-1] <= FRAMES_PER_GROUP * SAMPLES_PER_FRAME and sum(sizes) == frames * SAMPLES_PER_FRAME
    starts = np.cumsum([0, *sizes[:-1]]) / 24000
    assert [c["start_seconds"] for c in chunks] == pytest.approx(list(starts))
    assert all(c["encoding"] == "pcm_s16le" and c["sample_rate"] == 24000 for c in chunks)
    elapsed = [c["elapsed_seconds"] for c in chunks]
    assert elapsed == sorted(elapsed) and 0 < summary["metrics"]["first_audio_seconds"] <= elapsed[0]
    whole = handle_job({"id": "w", "input": LONG}, service)
    assert_same_audio(pcm(chunks), wav_pcm(whole["audio_b64"]))


def test_a_stream_closed_midway_leaves_the_engine_usable(service):
    stream = stream_job({"id": "c", "input": {**LONG, "stream": True}}, service)
    first, second = next(stream), next(stream)
    assert (first["chunk_index"], second["chunk_index"]) == (0, 1)
    stream.close()  # what the SDK does when a streaming job is cancelled
    out = handle_job({"id": "n", "input": {"text": "Next job.", "seed": 1}}, service)
    assert "audio_b64" in out


def test_stream_refuses_options_that_need_the_whole_audio(service):
    items = list(
        stream_job(
            {"input": {"text": "x", "stream": True, "output_format": "mp3", "voice_settings": {"speed": 2.0}}}, service
        )
    )
    assert items == [
        {
            "error": "invalid input: output_format, voice_settings.speed: not available with stream: true "
            "(chunks are PCM 16-bit 24 kHz as generated); leave them at their defaults or do not stream"
        }
    ]
    refused = handle_job({"input": {"text": "x", "stream": True}}, service)
    assert "this endpoint does not stream; set VV_STREAMING=true" in refused["error"]


# ------------------------------------------------------------------ run-ahead


def test_run_ahead_generates_while_the_consumer_waits_and_is_bounded():
    produced = []

    def numbers():
        for n in range(100):
            produced.append(n)
            yield n

    ahead = RunAhead(numbers, depth=5)
    time.sleep(0.5)  # the consumer takes nothing yet
    assert len(produced) == 6  # five queued, the sixth waiting for room: bounded, and ahead of the consumer
    assert list(ahead) == list(range(100))
    assert ahead.join(2)


def test_run_ahead_close_stops_the_generator_in_its_thread():
    closed_in = []

    def endless():
        try:
            while True:
                yield 1
        finally:
            closed_in.append(threading.current_thread().name)

    ahead = RunAhead(endless, depth=2)
    items = iter(ahead)
    assert next(items) == 1
    items.close()
    assert ahead.join(2) and closed_in and closed_in[0] != threading.current_thread().name


def test_run_ahead_hands_over_items_then_the_error():
    def failing():
        yield "a"
        yield "b"
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for item in RunAhead(failing):
            got.append(item)
    assert got == ["a", "b"]


def test_run_ahead_async_consumer_cancelled_leaves_no_thread_waiting():
    def slow():
        for n in range(1000):
            time.sleep(0.01)
            yield n

    ahead = RunAhead(slow, depth=2)

    async def consume():
        async for n in ahead.aiter():
            if n == 3:
                raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consume())
    assert ahead.join(2)


# ------------------------------------------- the SDK's own per-job loop


class Posts:
    """What the runpod SDK would have sent to RunPod: stream posts and the final result."""

    def __init__(self, monkeypatch):
        from runpod.serverless.modules import rp_http

        self.stream: list[dict] = []
        self.done: list[dict] = []

        async def transmit(_session, url, data):
            (self.done if url.startswith(rp_http.JOB_DONE_URL) else self.stream).append(json.loads(data))

        monkeypatch.setattr(rp_http, "_transmit", transmit)


class FakeSession:
    headers: dict = {}  # noqa: RUF012 - the SDK sets X-Request-ID on it


def run_streaming_job(job_input: dict, service, monkeypatch) -> tuple[Posts, dict]:
    """One job through runpod's ``rp_job.handle_job``, with the start config the worker gives the SDK."""
    from runpod.serverless.modules import rp_job

    posts = Posts(monkeypatch)
    config = {"handler": worker.streaming_handler}
    monkeypatch.setattr(worker, "_service", service)
    monkeypatch.setattr(worker, "_sdk_config", config)
    asyncio.run(rp_job.handle_job(FakeSession(), config, {"id": "job-1", "input": job_input}))
    assert len(posts.done) == 1
    return posts, config


def test_streamed_job_posts_every_chunk_and_keeps_only_the_summary(service, monkeypatch):
    posts, config = run_streaming_job({**LONG, "stream": True}, service, monkeypatch)
    streamed = [post["output"] for post in posts.stream]
    chunks, summary = streamed[:-1], streamed[-1]
    assert summary["done"] is True and summary["chunks"] == len(chunks) > 2
    assert all(len(json.dumps(post)) < RUNPOD_STREAM_ITEM_LIMIT for post in posts.stream)
    assert posts.done == [{"output": [summary]}]  # bounded: no chunk in the final output
    assert not config.get("refresh_worker")


def test_unstreamed_request_on_a_streaming_endpoint_keeps_its_response(service, monkeypatch):
    posts, _ = run_streaming_job({"text": "Whole.", "seed": 2}, service, monkeypatch)
    (output,) = posts.done[0]["output"]
    assert wav_pcm(output["audio_b64"]).size == output["duration_seconds"] * 24000


def test_a_failed_streamed_job_ends_failed(service, monkeypatch):
    posts, config = run_streaming_job({"text": "", "stream": True}, service, monkeypatch)
    assert posts.stream == []
    assert posts.done == [
        {"error": "invalid input: text: text is empty after removing whitespace and control characters"}
    ]
    assert not config.get("refresh_worker")


def test_a_device_fault_mid_stream_fails_the_job_and_stops_the_worker(service, monkeypatch):
    real = service.stream

    def faulting(payload, on_progress=None):
        items = real(payload, on_progress)
        yield next(items)
        items.close()
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(service, "stream", faulting)
    posts, config = run_streaming_job({**LONG, "stream": True}, service, monkeypatch)
    assert len(posts.stream) == 1 and posts.stream[0]["output"]["chunk_index"] == 0
    (final,) = posts.done
    assert final["stopPod"] is True and "output" not in final
    assert final["error"].startswith("internal error during synthesis (RuntimeError): CUDA error")
    assert config["refresh_worker"] is True


# -------------------------------------------------------- RunPod's OpenAI path


def test_openai_route_sse_streams_events_of_about_a_second(service, monkeypatch):
    body = {"model": "tts-1", "input": LONG["text"], "seed": 3, "response_format": "pcm", "stream_format": "sse"}
    posts, _ = run_streaming_job({"openai_route": "/v1/audio/speech", "openai_input": body}, service, monkeypatch)
    events = [json.loads(post["output"].removeprefix("data: ")) for post in posts.stream]
    assert all(post["output"].endswith("\n\n") for post in posts.stream)
    deltas, done = events[:-1], events[-1]
    assert {e["type"] for e in deltas} == {"speech.audio.delta"} and done["type"] == "speech.audio.done"
    sizes = [len(base64.b64decode(e["audio"])) // 2 for e in deltas]
    assert sizes[0] == SAMPLES_PER_FRAME and all(s == FRAMES_PER_GROUP * SAMPLES_PER_FRAME for s in sizes[1:-1])
    audio = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in deltas), dtype="<i2")
    whole = handle_job({"input": LONG}, service)
    assert_same_audio(audio, wav_pcm(whole["audio_b64"]))
    assert done["usage"]["output_tokens"] * SAMPLES_PER_FRAME == audio.size
    assert posts.done == [{"output": []}]  # text events are audio too: not kept


def test_openai_route_whole_file_models_and_voices(service):
    body = {"model": "vibevoice", "input": "Hello there.", "seed": 1, "response_format": "flac"}
    out = handle_job({"input": {"openai_route": "/v1/audio/speech", "openai_input": body}}, service)
    assert out["format"] == "flac" and out["mime_type"] == "audio/flac" and out["usage"]["output_tokens"] > 0
    import av

    with av.open(io.BytesIO(base64.b64decode(out["audio_b64"]))) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples == out["usage"]["output_tokens"] * SAMPLES_PER_FRAME
    models = handle_job({"input": {"openai_route": "/v1/models"}}, service)
    assert "tts-1" in [m["id"] for m in models["data"]]
    assert handle_job({"input": {"openai_route": "/v1/audio/voices"}}, service) == service.list_voices()


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({"openai_route": "/v1/chat/completions", "openai_input": {}}, "'/v1/chat/completions' is not served here"),
        ({"openai_route": "/v1/models", "text": "x"}, "no other fields are allowed, got text"),
        (
            {
                "openai_route": "/v1/audio/speech",
                "openai_input": {"model": "tts-1", "input": "x", "stream_format": "sse"},
            },
            "stream_format: sse needs a streaming endpoint; set VV_STREAMING=true",
        ),
        (
            {"openai_route": "/v1/audio/speech", "openai_input": {"model": "tts-1", "input": "x", "speed": 3}},
            "speed: Input should be less than or equal to 2",
        ),
    ],
)
def test_openai_route_refusals_on_a_queue_endpoint(service, job_input, message):
    out = handle_job({"input": job_input}, service)
    assert message in out["error"] and set(out) == {"error"}


# ---------------------------------------------- the SDK's local API server


@pytest.fixture(scope="module")
def streaming_server(subprocess_env, tmp_path_factory):
    with api_server(dict(subprocess_env, VV_STREAMING="true"), tmp_path_factory.mktemp("stream-server")) as base:
        yield base


def post(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload or {}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=180) as response:
        return json.load(response)


def test_stream_route_returns_every_chunk(streaming_server):
    """The SDK's local server runs the async generator handler; it ignores jobs_handler (local mode only)."""
    job = post(f"{streaming_server}/run", {"input": {**LONG, "stream": True}})
    streamed = post(f"{streaming_server}/stream/{job['id']}")
    assert streamed["status"] == "COMPLETED", streamed
    items = [entry["output"] for entry in streamed["stream"]]
    chunks, summary = items[:-1], items[-1]
    assert summary["done"] is True and summary["chunks"] == len(chunks) > 1
    whole = post(f"{streaming_server}/runsync", {"input": LONG})
    assert whole["status"] == "COMPLETED" and isinstance(whole["output"], list) and len(whole["output"]) == 1
    assert_same_audio(pcm(chunks), wav_pcm(whole["output"][0]["audio_b64"]))


def test_client_streams_to_a_wav_equal_to_the_whole_result(streaming_server, tmp_path):
    from vv_worker.client import RunPodClient, save_audio, save_stream

    client = RunPodClient(local_url=streaming_server, timeout_s=180, poll_interval_s=0.2)
    streamed = client.synthesize(LONG, mode="stream")
    whole = client.synthesize(LONG, mode="runsync")
    a = save_stream(streamed["chunks"], tmp_path / "streamed.wav")
    b = save_audio(whole, tmp_path / "whole.wav")
    assert_same_audio(sf.read(a, dtype="int16")[0], sf.read(b, dtype="int16")[0])


# --------------------------- the real SDK worker loop against a fake RunPod


class FakeRunPod:
    """RunPod's job API on loopback: hands out queued jobs, records stream posts and results."""

    def __init__(self, jobs: list[dict]):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.jobs = list(jobs)
        self.stream: dict[str, list] = {}
        self.done: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status: int, body: bytes = b"", kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/job-take/") and fake.jobs:
                    self._reply(200, json.dumps(fake.jobs.pop(0)).encode())
                elif self.path.startswith("/job-take-batch/") and fake.jobs:  # a worker taking several at once
                    size = int(parse_qs(urlsplit(self.path).query)["batch_size"][0])
                    taken, fake.jobs[:] = fake.jobs[:size], fake.jobs[size:]
                    self._reply(200, json.dumps(taken).encode())
                else:
                    if self.path.startswith("/job-stop/"):
                        time.sleep(0.5)  # a long poll with nothing to stop
                    self._reply(204)

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                job_id = self.path.split("?")[0].rsplit("/", 1)[-1]
                if self.path.startswith("/job-stream/"):
                    fake.stream.setdefault(job_id, []).append(data)
                else:
                    fake.done[job_id] = data
                self._reply(200, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_PING": f"{self.base}/ping/$RUNPOD_POD_ID?gpu=cpu",
            "RUNPOD_POD_ID": "fake-worker",
            "RUNPOD_AI_API_KEY": "fake-key",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }


def run_worker(subprocess_env, tmp_path, jobs: list[dict], **env: str) -> tuple[FakeRunPod, str]:
    """``python -m vv_worker.handler`` as on RunPod, until every job has its result; returns its whole log."""
    import subprocess
    import sys

    fake = FakeRunPod(jobs)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vv_worker.handler"],
            env={**subprocess_env, **fake.env(), **env},
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        try:
            while len(fake.done) < len(jobs) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(timeout=30)
            fake.server.shutdown()
    log = log_path.read_text()
    assert len(fake.done) == len(jobs), log[-3000:]
    return fake, log


def assert_no_audio_in(log: str) -> None:
    assert "audio_b64" not in log and "UklGR" not in log  # neither the field nor a WAV header in base64
    assert not re.search(r"[A-Za-z0-9+/]{200,}", log), "a long base64 run reached the log"


def test_worker_on_runpod_streams_fails_cleanly_and_logs_no_audio(subprocess_env, tmp_path):
    jobs = [
        {"id": "streamed", "input": {**LONG, "stream": True}},
        {"id": "whole", "input": {"text": "Whole answer.", "seed": 1}},
        {"id": "bad", "input": {"text": "", "stream": True}},
    ]
    # RUNPOD_LOG_LEVEL=DEBUG would print every output: the worker raises it to INFO and says so
    fake, log = run_worker(subprocess_env, tmp_path, jobs, VV_STREAMING="true", RUNPOD_LOG_LEVEL="DEBUG")
    assert_no_audio_in(log)
    assert "would log job outputs (audio); using INFO" in log
    streamed = [post["output"] for post in fake.stream["streamed"]]
    assert streamed[-1]["done"] is True and streamed[-1]["chunks"] == len(streamed) - 1 > 2
    assert fake.done["streamed"] == {"output": [streamed[-1]]}
    (whole,) = fake.done["whole"]["output"]
    assert wav_pcm(whole["audio_b64"]).size > 0
    assert fake.done["bad"] == {
        "error": "invalid input: text: text is empty after removing whitespace and control characters"
    }


def test_worker_on_runpod_without_streaming_logs_no_audio(subprocess_env, tmp_path):
    jobs = [{"id": "one", "input": {"text": "Hello.", "seed": 1}}, {"id": "bad", "input": {"seed": -1, "text": "x"}}]
    fake, log = run_worker(subprocess_env, tmp_path, jobs)  # RUNPOD_LOG_LEVEL unset: the SDK's default is DEBUG
    assert_no_audio_in(log)
    assert wav_pcm(fake.done["one"]["output"]["audio_b64"]).size > 0
    assert fake.done["bad"]["error"].startswith("invalid input: seed:")
