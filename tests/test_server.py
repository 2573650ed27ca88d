"""The HTTP mode with real clients: the official ``openai`` package, curl (docs/API.md), plain HTTP."""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
import time
import urllib.request

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO
from speech_server import speech_server

from vv_worker.engine import SAMPLES_PER_FRAME

openai = pytest.importorskip("openai")

TEXT = "The quick brown fox jumps over the lazy dog, twice."
LONG_TEXT = "Streaming means the first audio arrives while the rest is still being made. " * 5


@pytest.fixture(scope="module")
def server(subprocess_env, tmp_path_factory):
    with speech_server(subprocess_env, tmp_path_factory.mktemp("speech-server")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="not-needed", max_retries=0, timeout=120)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Any container/codec, decoded with FFmpeg (what players use) to float mono."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        rate = stream.rate
    samples = np.concatenate(frames) if frames else np.zeros(0)
    if samples.dtype == np.int16:
        samples = samples / 32768
    return samples.astype(np.float32), rate


def assert_same_audio(a: np.ndarray, b: np.ndarray) -> None:
    """Two generations of one request: the same samples, but for float rounding when they shared a batch."""
    assert a.shape == b.shape
    np.testing.assert_allclose(a.astype(int), b.astype(int), rtol=0, atol=4)


def pcm_of(client, text: str = TEXT, seed: int = 7, **extra) -> np.ndarray:
    data = client.audio.speech.create(
        model="tts-1", input=text, voice=openai.omit, response_format="pcm", extra_body={"seed": seed, **extra}
    ).content
    return np.frombuffer(data, dtype="<i2")


def test_ping_says_loading_then_ready(server):
    assert server.ping_statuses[-1] == 200
    assert 204 in server.ping_statuses  # the socket opened before the model was loaded
    assert server.ping_statuses.index(204) < server.ping_statuses.index(200)


def test_models_and_voices(client, server):
    ids = [model.id for model in client.models.list()]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "vibevoice"} <= set(ids)
    with urllib.request.urlopen(f"{server.base}/v1/audio/voices") as response:
        assert json.load(response) == {"voices": [], "registered_voices": [], "default_voice": None}


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_whole_file_in_every_format(client, response_format):
    reference = pcm_of(client)
    assert reference.size > 0 and reference.size % SAMPLES_PER_FRAME == 0
    response = client.audio.speech.create(
        model="tts-1", input=TEXT, voice=openai.omit, response_format=response_format, extra_body={"seed": 7}
    )
    data = response.content
    if response_format == "pcm":
        assert_same_audio(np.frombuffer(data, dtype="<i2"), reference)
        return
    samples, rate = decode(data)
    expected = reference / 32768
    if response_format in ("wav", "flac"):  # lossless: the very samples
        assert rate == 24000
        np.testing.assert_allclose(samples, expected, atol=5 / 32768)
        if response_format == "wav":
            read, _ = sf.read(io.BytesIO(data), dtype="int16")  # libsndfile reads the streamed header too
            assert_same_audio(read, reference)
        return
    # lossy: the right length (codec padding aside) and about the same level
    duration = samples.size / rate
    assert abs(duration - reference.size / 24000) < 0.15, (response_format, duration)
    level = float(np.sqrt(np.mean(samples**2)))
    expected_level = float(np.sqrt(np.mean(expected**2)))
    assert 0.5 < level / expected_level < 2.0, (response_format, level, expected_level)
    assert (
        response.response.headers["content-type"]
        == {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}[response_format]
    )


def test_streaming_response_arrives_while_generating(client):
    arrivals = []
    started = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", input=LONG_TEXT, voice=openai.omit, response_format="pcm", extra_body={"seed": 3}
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        for chunk in response.iter_bytes():
            arrivals.append((time.perf_counter() - started, len(chunk)))
    total = sum(size for _, size in arrivals)
    assert total == pcm_of(client, LONG_TEXT, seed=3).size * 2
    assert len(arrivals) > 3
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < last / 2, arrivals  # the first audio came long before the end


def test_sse_events_in_openai_shape(client, server):
    request = urllib.request.Request(
        f"{server.base}/v1/audio/speech",
        data=json.dumps(
            {"model": "tts-1", "input": TEXT, "response_format": "pcm", "stream_format": "sse", "seed": 7}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [json.loads(block.removeprefix("data: ")) for block in body.split("\n\n") if block]
    deltas, done = events[:-1], events[-1]
    assert {event["type"] for event in deltas} == {"speech.audio.delta"} and len(deltas) > 1
    import base64

    audio = np.frombuffer(b"".join(base64.b64decode(event["audio"]) for event in deltas), dtype="<i2")
    assert_same_audio(audio, pcm_of(client))
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["output_tokens"] == audio.size // SAMPLES_PER_FRAME and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_speed_stretches_the_whole_audio(client):
    normal = pcm_of(client)
    data = client.audio.speech.create(
        model="tts-1", input=TEXT, voice=openai.omit, response_format="wav", speed=2.0, extra_body={"seed": 7}
    ).content
    stretched, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and abs(stretched.size - normal.size / 2) <= SAMPLES_PER_FRAME
    info = sf.info(io.BytesIO(data))
    assert info.frames == stretched.size  # whole audio known: the header holds the real length


@pytest.mark.parametrize(
    ("kwargs", "error_class", "param", "needle"),
    [
        ({"instructions": "Speak cheerfully."}, "BadRequestError", "instructions", "VibeVoice takes no style"),
        ({"voice": "alloy"}, "BadRequestError", "voice", "unknown voice 'alloy'"),
        ({"speed": 4.0}, "BadRequestError", "speed", "less than or equal to 2"),
        ({"input": ""}, "BadRequestError", "input", "input: text is empty"),
        ({"model": "whisper-1"}, "NotFoundError", "model", "'whisper-1' is not served here"),
        ({"extra_body": {"stream": True}}, "BadRequestError", "stream", "stream: unknown field"),
        ({"extra_body": {"seed": -1}}, "BadRequestError", "seed", "seed: Input should be greater than or equal to 0"),
    ],
)
def test_errors_in_openai_shape(client, kwargs, error_class, param, needle):
    arguments = {"model": "tts-1", "input": TEXT, "voice": openai.omit, "response_format": "wav", **kwargs}
    with pytest.raises(getattr(openai, error_class)) as caught:
        client.audio.speech.create(**arguments)
    error = caught.value
    assert error.body["type"] == "invalid_request_error" and error.body["param"] == param
    assert needle in error.body["message"]


def test_concurrent_requests_are_all_served_and_ping_answers_meanwhile(client, server):
    expected = {seed: pcm_of(client, LONG_TEXT, seed=seed) for seed in (11, 12)}
    results: dict[int, np.ndarray] = {}

    def one(seed: int) -> None:
        results[seed] = pcm_of(client, LONG_TEXT, seed=seed)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in expected]
    for thread in threads:
        thread.start()
    pings = []
    while any(thread.is_alive() for thread in threads):
        started = time.perf_counter()
        assert server.ping() == 200
        pings.append(time.perf_counter() - started)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    for seed, audio in expected.items():
        assert_same_audio(results[seed], audio)  # generated together, in one batch: as alone
    assert pings and max(pings) < 1.0  # /ping is never stuck behind a generation


def test_a_client_that_leaves_mid_stream_does_not_block_the_next(client, server):
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", input=LONG_TEXT, voice=openai.omit, response_format="pcm", extra_body={"seed": 1}
    ) as response:
        next(response.iter_bytes())  # then leave
    started = time.perf_counter()
    assert pcm_of(client, "Next.").size > 0
    assert time.perf_counter() - started < 60
    assert server.process.poll() is None
    # the server noticed and stopped that generation (one "failed" line for it in the request log)
    deadline = time.monotonic() + 20
    while '"error":"the client disconnected; generation stopped"' not in server.log_tail(20000):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)


# ------------------------------------------------------- docs/API.md's curl


def curl_examples() -> list[str]:
    doc = (REPO / "docs" / "API.md").read_text()
    section = doc.split("## HTTP mode", 1)[1].split("\n## ", 1)[0]
    return [block for block in re.findall(r"```bash\n(.*?)```", section, re.S) if "curl" in block]


def test_docs_curl_examples_run(server, tmp_path):
    examples = curl_examples()
    assert len(examples) >= 4
    for example in examples:
        script = example.replace("http://127.0.0.1:8000", server.base)
        command = ["bash", "-euo", "pipefail", "-c", script]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120)
        assert done.returncode == 0, (example, done.stderr.decode(errors="replace"))
    for name in ("hello.mp3", "hello.wav", "stream.pcm"):
        data = (tmp_path / name).read_bytes()
        assert data, name
        if name.endswith(".pcm"):
            assert len(data) % (2 * SAMPLES_PER_FRAME) == 0
        else:
            samples, _ = decode(data)
            assert samples.size > 0, name
    events = (tmp_path / "events.txt").read_text().strip().split("\n\n")
    assert json.loads(events[-1].removeprefix("data: "))["type"] == "speech.audio.done"
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["error"]["param"] == "speed"


# ------------------------------------------------------------ in process


def test_while_loading_ping_is_204_and_requests_get_503():
    from fastapi.testclient import TestClient

    from vv_worker.http.app import ServerState, create_app

    state = ServerState()
    with TestClient(create_app(state)) as http:
        assert http.get("/ping").status_code == 204
        refused = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "x"})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "server_error"
        assert "still loading" in refused.json()["error"]["message"]
        assert http.get("/v1/models").status_code == 503
        state.faulted = "AcceleratorError: CUDA error: an illegal memory access was encountered"
        assert http.get("/ping").status_code == 503


def test_bad_bodies(service):
    from fastapi.testclient import TestClient

    from vv_worker.http import app as http_app

    with TestClient(http_app.create_app(http_app.ServerState(service=service))) as http:
        not_json = http.post("/v1/audio/speech", content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
        array = http.post("/v1/audio/speech", json=["x"])
        assert array.status_code == 400 and "must be a JSON object, got list" in array.json()["error"]["message"]
        huge = http.post("/v1/audio/speech", content=b"x" * (http_app.MAX_BODY_BYTES + 1))
        assert huge.status_code == 413
        missing = http.post("/v1/audio/speech", json={"model": "tts-1"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"


def test_server_refuses_the_reference_engine_and_bad_ports(subprocess_env, tmp_path):
    import sys

    for env, needle in (
        ({"VV_ENGINE": "reference"}, "VV_ENGINE=reference cannot stream"),
        ({"VV_PORT": "99999"}, "VV_PORT: Input should be less than or equal to 65535"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "vv_worker.server"], env={**subprocess_env, **env}, capture_output=True, text=True
        )
        assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr


def test_texts_longer_than_one_generation_and_pauses_come_back_whole(client):
    """Over one generation (600 characters, or pause tags) the worker splits, generates together and
    joins the chunks; the server then sends the audio once it is whole."""
    long_text = LONG_TEXT * 3
    assert len(long_text) > 600
    response = client.audio.speech.create(
        model="tts-1", input=long_text, voice=openai.omit, response_format="wav", extra_body={"seed": 2}
    )
    samples, rate = decode(response.content)
    assert rate == 24000 and samples.size > 0
    paused = client.audio.speech.create(
        model="tts-1", input="Before. [pause 2s] After.", voice=openai.omit, response_format="pcm"
    )
    pcm = np.frombuffer(paused.content, dtype="<i2")
    assert pcm.size >= 2 * 24000
    assert (pcm == 0).sum() >= 2 * 24000  # the pause is exact silence, 48,000 samples at least
