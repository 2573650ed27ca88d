"""Pause tags, long texts, segments and registered voices through the handler, on the tiny model."""

from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import pytest
import soxr
from conftest import api_server, decode_wav, speechlike, wav_base64

from vv_worker import longform
from vv_worker.engine import SAMPLES_PER_FRAME
from vv_worker.handler import handle_job
from vv_worker.longform import CHUNK_MAX_CHARS
from vv_worker.pauses import Pause
from vv_worker.service import SynthesisService
from vv_worker.voice_store import VoiceCatalog, VoiceStore

RATE = 24000
OVERLAP = round(longform.CROSSFADE_SECONDS * RATE)


@pytest.fixture(scope="module")
def svc(service, tmp_path_factory) -> SynthesisService:
    """The session's engine with a frame cap small enough for twenty-minute texts: 4 + ceil(0.005 x characters)."""
    settings = service.settings.model_copy(update={"frames_per_char": 0.005})
    store = VoiceStore(tmp_path_factory.mktemp("registered"))
    return SynthesisService(settings, service.engine, VoiceCatalog(settings.voices_dir, store))


def run(svc: SynthesisService, **payload) -> dict:
    output = handle_job({"id": "t", "input": payload}, svc)
    assert "error" not in output, output["error"]
    return output


def frames_of(chunk_text: str) -> int:
    return 4 + int(np.ceil(0.005 * len(chunk_text)))


# --- pauses ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [24000, 44100])
def test_a_pause_is_exact_silence_at_the_output_rate(svc, rate):
    out = run(svc, text="First words here. [pause 750ms] Then the rest.", seed=3, sample_rate=rate)
    samples, got_rate, _ = decode_wav(out["audio_b64"])
    assert got_rate == rate
    first, second = out["chunks"]
    assert [first["text"], second["text"]] == ["First words here.", "Then the rest."]
    assert first["seed"] == second["seed"] == out["seed_used"] == 3
    assert out["pauses"] == [{"position": 19, "seconds": 0.75, "samples": round(0.75 * rate)}]
    head = soxr.resample(np.zeros(first["frames"] * SAMPLES_PER_FRAME, np.float32), RATE, rate).size
    gap = round(0.75 * rate)
    assert samples.size == head + gap + soxr.resample(np.zeros(second["frames"] * SAMPLES_PER_FRAME), RATE, rate).size
    assert not samples[head : head + gap].any()  # exactly zero for the whole pause
    assert samples[head - 1] != 0 or samples[head - 2] != 0  # speech right up to it
    assert out["duration_seconds"] == samples.size / rate


def test_pause_tags_in_a_script_keep_each_speaker(svc):
    out = run(svc, text="Speaker 1: Hello [pause 1s] again.\nSpeaker 2: Hi <break time='250ms'/> there.", seed=1)
    assert [c["text"] for c in out["chunks"]] == [
        "Speaker 1: Hello",
        "Speaker 1: again.\nSpeaker 2: Hi",
        "Speaker 2: there.",
    ]
    assert [p["seconds"] for p in out["pauses"]] == [1.0, 0.25]
    assert out["speakers_used"] == {"1": None, "2": None}


def test_a_bad_pause_tag_is_refused_and_nothing_is_read_aloud(svc):
    output = handle_job({"id": "t", "input": {"text": "Wait [pause 5 parsecs] here."}}, svc)
    assert set(output) == {"error"}
    assert "text: pause tag '[pause 5 parsecs]' at character 6: unknown unit 'parsecs'" in output["error"]


def test_punctuation_alone_between_tags_is_not_generated_and_says_so(svc):
    out = run(svc, text="Done [pause 500ms].", seed=2)
    assert [c["text"] for c in out["chunks"]] == ["Done"]
    assert any("'.' between pause tags has nothing to say" in w for w in out["warnings"])


# --- long-form ---------------------------------------------------------------------------------------------------

SENTENCES = [
    "The rain had stopped by the time the train reached the coast.",
    "Nobody on the platform seemed to notice the stranger with the violin case.",
    "Was he a musician, or something else entirely?",
    "The station master, who had seen everything in thirty years, looked twice.",
]


def chapter(paragraphs: int) -> str:
    """About 300 characters a paragraph, a one-second pause between paragraphs."""
    body = [" ".join(SENTENCES[(i + k) % 4] for k in range(5)) for i in range(paragraphs)]
    return "\n\n[pause 1s]\n\n".join(body)


def test_a_twenty_minute_chapter_with_pauses_comes_back_from_one_request(svc):
    text = chapter(60)  # 18 000+ characters: twenty minutes of speech at 15 characters a second
    assert len(text) > 18_000
    progress: list[tuple[int, int]] = []
    out = svc.handle({"text": text, "seed": 11}, on_progress=lambda done, cap: progress.append((done, cap)))
    assert "error" not in out, out.get("error")
    timeline, _ = longform.layout(text)
    expected = [item for item in timeline if isinstance(item, str)]
    assert [c["text"] for c in out["chunks"]] == expected and len(expected) >= 30
    assert all(c["characters"] <= CHUNK_MAX_CHARS and c["seed"] == 11 for c in out["chunks"])
    assert [c["frame_cap"] for c in out["chunks"]] == [frames_of(t) for t in expected]
    assert len(out["pauses"]) == 59 and {p["samples"] for p in out["pauses"]} == {RATE}
    samples, _, _ = decode_wav(out["audio_b64"])
    # every run of chunks between two pauses is crossfaded; the pauses add exactly one second each
    runs, run = [], 0
    for item in timeline:
        if isinstance(item, Pause):
            runs.append(run)
            run = 0
        else:
            run += 1
    runs.append(run)
    crossfades = sum(max(0, n - 1) for n in runs)
    frames = sum(c["frames"] for c in out["chunks"])
    assert samples.size == frames * SAMPLES_PER_FRAME - crossfades * OVERLAP + 59 * RATE
    assert out["metrics"]["frames"] == frames and out["metrics"]["chunks"] == len(expected)
    total = sum(c["frame_cap"] for c in out["chunks"])
    assert progress[-1] == (total, total) and {cap for _, cap in progress} == {total}


def test_the_text_limit_is_raised_and_still_refuses_beyond_it(svc):
    limit = svc.settings.max_text_chars
    assert limit == 30_000
    output = handle_job({"id": "t", "input": {"text": "a " * (limit // 2) + "b"}}, svc)
    assert f"more than the limit of {limit}" in output["error"]


def test_streaming_takes_one_generation_only(service):
    from vv_worker.handler import stream_job

    for payload, expect in [
        (
            {"text": "x " * 400, "stream": True},
            f"with stream: true a text is one generation, at most {CHUNK_MAX_CHARS}",
        ),
        ({"text": "a [pause 1s] b", "stream": True}, "pause tags are not available with stream: true"),
        ({"segments": [{"text": "a"}], "stream": True}, "segments: not available with stream: true"),
    ]:
        items = list(stream_job({"id": "t", "input": payload}, service))
        assert len(items) == 1 and expect in items[0]["error"], items


# --- segments ----------------------------------------------------------------------------------------------------


def test_segments_get_one_audio_each_and_an_exact_concatenation(svc):
    out = run(
        svc,
        segments=[{"text": "The first one."}, {"text": "A second [pause 300ms] segment.", "seed": 5}, {"text": "End."}],
        seed=9,
        concat=True,
        gap=0.25,
        output_format="flac",
    )
    assert [s["seed_used"] for s in out["segments"]] == [9, 5, 9]
    audios = [decode_wav(s["audio_b64"])[0] for s in out["segments"]]
    assert [a.size for a in audios] == [s["samples"] for s in out["segments"]]
    joined, _, info = decode_wav(out["concatenation"]["audio_b64"])
    assert info.format == "FLAC"
    concat = out["concatenation"]
    gap = concat["gap_samples"]
    assert gap == 6000 and concat["gap_seconds"] == 0.25
    assert joined.size == sum(a.size for a in audios) + 2 * gap == concat["samples"]
    for audio, place in zip(audios, concat["segments"], strict=True):
        start = place["start_sample"]
        np.testing.assert_array_equal(joined[start : start + place["samples"]], audio)
        if start:
            assert not joined[start - gap : start].any()
    metrics = out["metrics"]
    assert metrics["segments"] == 3 and metrics["chunks"] == 4
    assert metrics["frames"] == sum(s["metrics"]["frames"] for s in out["segments"])
    assert metrics["engine"] == "fast" and metrics["model"] and metrics["sample_rate"] == RATE
    assert metrics["execution_time"] == metrics["total_seconds"] >= metrics["generation_seconds"] > 0
    assert out["duration_seconds"] == sum(a.size for a in audios) / RATE


def test_regenerating_one_segment_and_splicing_it_in(svc):
    """The documented recipe: same request with one segment's seed changed, or that segment alone, spliced in."""
    segments = [{"text": "Keep this part."}, {"text": "Redo this part.", "seed": 1}, {"text": "Keep this too."}]
    first = run(svc, segments=segments, seed=4, concat=True)
    redo = run(svc, segments=[{**segments[1], "seed": 2}], seed=4)
    new_audio, _, _ = decode_wav(redo["segments"][0]["audio_b64"])
    joined, _, _ = decode_wav(first["concatenation"]["audio_b64"])
    place = first["concatenation"]["segments"][1]
    spliced = np.concatenate(
        [joined[: place["start_sample"]], new_audio, joined[place["start_sample"] + place["samples"] :]]
    )
    second = run(svc, segments=[segments[0], {**segments[1], "seed": 2}, segments[2]], seed=4, concat=True)
    expected, _, _ = decode_wav(second["concatenation"]["audio_b64"])
    assert spliced.size == expected.size
    # batched and solo runs agree to float rounding, so at most a quantisation step apart in 16-bit audio
    np.testing.assert_allclose(spliced, expected, rtol=0, atol=2 / 32768)
    assert not np.allclose(new_audio, decode_wav(first["segments"][1]["audio_b64"])[0][: new_audio.size])


def test_segment_voices_override_the_request_cast(svc):
    guest = wav_base64(speechlike(1.5, seed=3), RATE)
    out = run(
        svc,
        segments=[
            {"text": "Speaker 1: Hello.\nSpeaker 2: Hi."},
            {"text": "Speaker 2: Just me.", "speakers": {"2": {"reference_audio": guest}}},
        ],
        speakers={"1": {"reference_audio": guest}},
        seed=1,
    )
    assert out["segments"][0]["speakers_used"] == {"1": "reference_audio", "2": None}
    assert out["segments"][1]["speakers_used"] == {"2": "reference_audio"}
    assert any("Speaker 2 was generated without a voice prompt" in w for w in out["warnings"])


def test_a_request_voice_that_no_segment_uses_is_warned_about(svc):
    guest = wav_base64(speechlike(1.5, seed=3), RATE)
    out = run(svc, segments=[{"text": "Mine.", "reference_audio": guest}], reference_audio=guest, seed=1)
    expected = "the request's voice for Speaker 0 is not used: every segment with that speaker gives its own"
    assert expected in out["warnings"]


def test_too_much_inline_audio_in_all_segments_together_is_refused_with_the_ways_out(svc, monkeypatch):
    small = svc.settings.model_copy(update={"max_inline_bytes": 40_000})
    monkeypatch.setattr(svc, "settings", small)
    output = handle_job({"id": "t", "input": {"segments": [{"text": "One."}, {"text": "Two."}], "concat": True}}, svc)
    assert "the 3 encoded audios are" in output["error"] and "over the inline limit of 40,000" in output["error"]


# --- registered voices -------------------------------------------------------------------------------------------


def test_register_list_use_and_delete_a_voice(svc):
    reference = wav_base64(speechlike(2.0, seed=8), RATE)
    registered = run(svc, action="register_voice", name="Narrator", reference_audio=reference, description="calm")
    assert registered["registered"]["name"] == "Narrator" and registered["registered"]["seconds"] == 2.0
    listing = handle_job({"input": {"action": "list_voices"}}, svc)
    assert [v["name"] for v in listing["registered_voices"]] == ["Narrator"]
    by_name = run(svc, text="Using the stored voice.", voice="narrator", seed=6)
    by_reference = run(svc, text="Using the stored voice.", reference_audio=reference, seed=6)
    assert by_name["voice_used"] == "Narrator"
    a, b = decode_wav(by_name["audio_b64"])[0], decode_wav(by_reference["audio_b64"])[0]
    np.testing.assert_array_equal(a, b)  # the stored voice is exactly the processed reference
    deleted = run(svc, action="delete_voice", name="NARRATOR")
    assert deleted == {"success": True, "deleted": "NARRATOR"}
    gone = handle_job({"input": {"text": "Hi.", "voice": "narrator"}}, svc)
    assert "unknown voice 'narrator'" in gone["error"]


def test_a_voice_registered_in_one_worker_process_is_used_by_name_from_a_fresh_one(subprocess_env, tmp_path):
    env = dict(subprocess_env, VV_VOICE_STORE_DIR=str(tmp_path / "store"))
    reference = wav_base64(speechlike(2.0, seed=12), RATE)

    def runsync(base: str, payload: dict) -> dict:
        request = urllib.request.Request(
            f"{base}/runsync", json.dumps({"input": payload}).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=180) as response:
            body = json.load(response)
        assert body["status"] == "COMPLETED", body
        return body["output"]

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with api_server(env, tmp_path / "first") as base:
        assert runsync(base, {"action": "register_voice", "name": "host", "reference_audio": reference})["success"]
        by_reference = runsync(base, {"text": "Welcome back.", "reference_audio": reference, "seed": 3})
    with api_server(env, tmp_path / "second") as base:  # a new process: nothing of the first is in memory
        listed = runsync(base, {"action": "list_voices"})
        assert [v["name"] for v in listed["registered_voices"]] == ["host"]
        by_name = runsync(base, {"text": "Welcome back.", "voice": "host", "seed": 3})
    assert by_name["voice_used"] == "host"
    assert base64.b64decode(by_name["audio_b64"]) == base64.b64decode(by_reference["audio_b64"])


def test_voice_actions_work_on_a_streaming_endpoint_too(svc):
    reference = wav_base64(speechlike(1.5, seed=9), RATE)
    items = list(svc.stream({"action": "register_voice", "name": "streamer", "reference_audio": reference}))
    assert len(items) == 1 and items[0]["registered"]["name"] == "streamer"
    assert [v["name"] for v in next(svc.stream({"action": "list_voices"}))["registered_voices"]] == ["streamer"]
    assert list(svc.stream({"action": "delete_voice", "name": "streamer"})) == [
        {"success": True, "deleted": "streamer"}
    ]


def test_the_http_server_registers_lists_uses_and_deletes_voices(svc):
    from fastapi.testclient import TestClient

    from vv_worker.http.app import ServerState, create_app

    reference = wav_base64(speechlike(1.5, seed=5), RATE)
    with TestClient(create_app(ServerState(service=svc))) as http:
        made = http.post("/v1/audio/voices", json={"name": "web-guest", "reference_audio": reference})
        assert made.status_code == 200 and made.json()["registered"]["name"] == "web-guest"
        again = http.post("/v1/audio/voices", json={"name": "web-guest", "reference_audio": reference})
        assert again.status_code == 400 and "already registered" in again.json()["error"]["message"]
        listed = http.get("/v1/audio/voices").json()
        assert [v["name"] for v in listed["registered_voices"]] == ["web-guest"]
        speech = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello.", "voice": "web-guest"})
        assert speech.status_code == 200 and len(speech.content) > 1000  # audio made with the registered voice
        bad = http.delete("/v1/audio/voices/..%2Fvoices")
        assert bad.status_code in (400, 404)
        gone = http.delete("/v1/audio/voices/web-guest")
        assert gone.status_code == 200 and gone.json() == {"success": True, "deleted": "web-guest"}
        missing = http.delete("/v1/audio/voices/web-guest")
        assert missing.status_code == 400 and "no registered voice 'web-guest'" in missing.json()["error"]["message"]
