"""A client written to the original API's contract, over the local API server (``--rp_serve_api``).

The contract (docs/API.md, "The original API's contract"): a successful output carries ``success: true``,
``audio_b64``, ``duration_seconds``, ``seed_used``, ``reference_used`` (a sentence), ``text_length`` and
``metrics.execution_time`` / ``metrics.model`` / ``metrics.sample_rate``; a failure is ``{"error": ...}``.
The client below raises unless ``success`` is true, as that API's own client did.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import soundfile as sf
from api_server import ApiServer
from conftest import speechlike, wav_base64

from vv_worker.handler import stream_job


class SynthesisFailed(RuntimeError):
    pass


class OriginalClient:
    """What a client of the original API does with an output: trust ``success``, then read the fields."""

    def __init__(self, server: ApiServer):
        self.server = server

    def synthesize(self, text: str, **options) -> dict:
        status, body = self.server.runsync({"text": text, **options})
        output = body.get("output") if status == 200 and body.get("status") == "COMPLETED" else body
        if not isinstance(output, dict) or output.get("success") is not True:
            raise SynthesisFailed((output or {}).get("error", json.dumps(body)[:300]))
        audio = base64.b64decode(output["audio_b64"])
        return {
            "audio": audio,
            "duration": float(output["duration_seconds"]),
            "seed": int(output["seed_used"]),
            "reference": str(output["reference_used"]),
            "text_length": int(output["text_length"]),
            "execution_time": float(output["metrics"]["execution_time"]),
            "model": str(output["metrics"]["model"]),
            "sample_rate": int(output["metrics"]["sample_rate"]),
        }


@pytest.fixture(scope="module")
def maya_library(tmp_path_factory) -> Path:
    """A library holding maya (the default voice) and alice, made of synthetic recordings."""
    folder = tmp_path_factory.mktemp("original-api-voices")
    entries = []
    for seed, name in enumerate(("alice", "maya")):
        sf.write(folder / f"{name}.wav", speechlike(1.5, 16000, seed=seed), 16000, subtype="PCM_16")
        entries.append(
            {"name": name, "file": f"{name}.wav", "url": "u", "sha256": "s", "license": "MIT", "language": "en"}
            | {"gender": "female", "description": "synthetic"}
        )
    (folder / "manifest.json").write_text(json.dumps({"voices": entries}))
    return folder


@pytest.fixture(scope="module")
def client(subprocess_env, maya_library, tmp_path_factory):
    server = ApiServer(dict(subprocess_env, VV_VOICES_DIR=str(maya_library)), tmp_path_factory.mktemp("original"))
    yield OriginalClient(server)
    server.stop()


def test_a_plain_request_meets_the_contract_with_the_default_voice(client, tiny_model_dir):
    text = "Hello from the original API."
    result = client.synthesize(text, seed=5)
    samples, rate = sf.read(io.BytesIO(result["audio"]), dtype="float32")
    assert rate == result["sample_rate"] == 24000
    assert result["duration"] == pytest.approx(samples.size / rate)
    assert result["seed"] == 5 and result["text_length"] == len(text)
    assert result["reference"] == "Used library voice 'maya', the default voice."
    assert result["execution_time"] > 0
    assert result["model"] == str(tiny_model_dir)


def test_references_and_rates_are_reported(client):
    cloned = client.synthesize("Clone me.", seed=1, reference_audio=wav_base64(speechlike(1.5), 24000))
    assert cloned["reference"] == "Used the recording sent in reference_audio."
    resampled = client.synthesize("At sixteen kilohertz.", seed=1, voice="alice", sample_rate=16000)
    assert resampled["sample_rate"] == 16000 == sf.info(io.BytesIO(resampled["audio"])).samplerate
    assert resampled["reference"] == "Used library voice 'alice'."
    script = client.synthesize("Speaker 1: Hi.\nSpeaker 2: Hello.", seed=1, speakers={"2": "alice"})
    assert (
        script["reference"]
        == "Used Speaker 1: library voice 'maya', the default voice; Speaker 2: library voice 'alice'."
    )


def test_a_failure_is_only_an_error_and_the_client_raises_with_it(client):
    status, body = client.server.runsync({"text": "Hi.", "seed": -1})
    assert status == 200 and body["status"] == "FAILED" and set(body) == {"id", "status", "error"}
    assert "success" not in body["error"]
    with pytest.raises(SynthesisFailed, match="seed: Input should be greater than or equal to 0"):
        client.synthesize("Hi.", seed=-1)
    assert client.synthesize("Still serving.", seed=2)["seed"] == 2


def test_a_streamed_summary_meets_the_contract_too(service):
    items = list(stream_job({"id": "s", "input": {"text": "Stream it.", "seed": 1, "stream": True}}, service))
    summary = items[-1]
    assert summary["done"] is True and summary["success"] is True
    assert summary["reference_used"] == "No reference voice was used: the speech was generated without a voice prompt."
    assert summary["metrics"]["sample_rate"] == 24000 and summary["metrics"]["execution_time"] > 0
    assert all("success" not in item for item in items[:-1])  # chunks are not responses
