"""Streaming: the engine's chunks through the handler, in-process and over the local API server."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from conftest import api_server

from vv_worker.engine import SAMPLES_PER_FRAME
from vv_worker.handler import handle_job, stream_job

RUNPOD_STREAM_ITEM_LIMIT = 1_000_000  # RunPod refuses streamed items over 1 MB


def pcm(chunks: list[dict]) -> np.ndarray:
    return np.concatenate([np.frombuffer(base64.b64decode(c["audio_b64"]), dtype="<i2") for c in chunks])


def wav_pcm(audio_b64: str) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(audio_b64)), dtype="int16")
    assert rate == 24000
    return samples


def test_stream_yields_ordered_chunks_then_a_summary(service):
    items = list(stream_job({"id": "s", "input": {"text": "Stream this, please.", "seed": 5, "stream": True}}, service))
    chunks, summary = items[:-1], items[-1]
    assert summary["done"] is True and summary["chunks"] == len(chunks) == summary["metrics"]["frames"]
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert all(c["encoding"] == "pcm_s16le" and c["sample_rate"] == 24000 for c in chunks)
    assert all(c["samples"] == SAMPLES_PER_FRAME for c in chunks)
    assert [c["start_seconds"] for c in chunks] == [i * SAMPLES_PER_FRAME / 24000 for i in range(len(chunks))]
    elapsed = [c["elapsed_seconds"] for c in chunks]
    assert elapsed == sorted(elapsed)
    assert 0 < summary["metrics"]["first_audio_seconds"] <= elapsed[0]
    whole = handle_job({"id": "w", "input": {"text": "Stream this, please.", "seed": 5}}, service)
    np.testing.assert_array_equal(pcm(chunks), wav_pcm(whole["audio_b64"]))


def test_a_stream_closed_midway_leaves_the_engine_usable(service):
    stream = stream_job(
        {"id": "c", "input": {"text": "Cancel me after two chunks.", "seed": 1, "stream": True}}, service
    )
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


@pytest.fixture(scope="module")
def streaming_server(subprocess_env, tmp_path_factory):
    with api_server(dict(subprocess_env, VV_STREAMING="true"), tmp_path_factory.mktemp("stream-server")) as base:
        yield base


def post(url: str, payload: dict | None = None) -> dict:
    data = json.dumps(payload or {}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=180) as response:
        return json.load(response)


def test_stream_route_returns_every_chunk_and_runsync_the_whole_result(streaming_server):
    text = "Streaming over the local API server."
    job = post(f"{streaming_server}/run", {"input": {"text": text, "seed": 9, "stream": True}})
    streamed = post(f"{streaming_server}/stream/{job['id']}")
    assert streamed["status"] == "COMPLETED", streamed
    items = [entry["output"] for entry in streamed["stream"]]
    chunks, summary = items[:-1], items[-1]
    assert summary["done"] is True and summary["chunks"] == len(chunks) > 1
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert all(len(json.dumps(entry)) < RUNPOD_STREAM_ITEM_LIMIT for entry in streamed["stream"])

    # the same request without stream: one item, the documented response, with the same audio
    whole = post(f"{streaming_server}/runsync", {"input": {"text": text, "seed": 9}})
    assert whole["status"] == "COMPLETED" and isinstance(whole["output"], list) and len(whole["output"]) == 1
    np.testing.assert_array_equal(pcm(chunks), wav_pcm(whole["output"][0]["audio_b64"]))

    # /runsync aggregates a streamed job's items
    aggregated = post(f"{streaming_server}/runsync", {"input": {"text": text, "seed": 9, "stream": True}})
    assert [item.get("chunk_index") for item in aggregated["output"][:-1]] == list(range(len(chunks)))

    failed = post(f"{streaming_server}/runsync", {"input": {"text": "", "stream": True}})
    assert failed["output"] == [
        {"error": "invalid input: text: text is empty after removing whitespace and control characters"}
    ]


def test_client_streams_to_a_wav_equal_to_the_whole_result(streaming_server, tmp_path):
    from vv_worker.client import RunPodClient, save_audio, save_stream

    client = RunPodClient(local_url=streaming_server, timeout_s=180, poll_interval_s=0.2)
    streamed = client.synthesize({"text": "The client streams too.", "seed": 4}, mode="stream")
    whole = client.synthesize({"text": "The client streams too.", "seed": 4}, mode="runsync")
    a = save_stream(streamed["chunks"], tmp_path / "streamed.wav")
    b = save_audio(whole, tmp_path / "whole.wav")
    np.testing.assert_array_equal(sf.read(a, dtype="int16")[0], sf.read(b, dtype="int16")[0])
