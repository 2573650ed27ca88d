"""The real code path on the tiny model: handler -> schema -> service -> transformers generate -> WAV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import decode_wav, speechlike, wav_base64

from vv_worker.engine import SAMPLES_PER_FRAME, GenerationJob
from vv_worker.handler import handle_job
from vv_worker.prompt import ScriptLine, single_speaker_script


def run(service, **payload) -> dict:
    return handle_job({"id": "test", "input": payload}, service)


def test_handler_returns_24k_mono_pcm16_wav_of_frames_times_hop(service):
    text = "Hello there, this is a test."
    out = run(service, text=text, seed=7)
    assert "error" not in out, out
    samples, rate, info = decode_wav(out["audio_b64"])
    assert (rate, info.channels, info.subtype, info.format) == (24000, 1, "PCM_16", "WAV")
    frames = out["metrics"]["frames"]
    # the tiny model always emits the audio token, so a request generates exactly its frame cap
    assert frames == service.frame_cap(text) == out["metrics"]["frame_cap"]
    assert samples.size == frames * SAMPLES_PER_FRAME
    assert out["duration_seconds"] == pytest.approx(frames * SAMPLES_PER_FRAME / 24000)
    assert out["sample_rate"] == 24000
    assert out["seed_used"] == 7
    assert out["text_length"] == len(text)
    assert out["voice_used"] is None
    assert np.abs(samples).max() > 0.01, "audio is silent"
    metrics = out["metrics"]
    assert metrics["generation_seconds"] > 0
    assert metrics["real_time_factor"] == pytest.approx(
        metrics["generation_seconds"] / (frames * SAMPLES_PER_FRAME / 24000), rel=1e-2
    )
    assert metrics["model"] == service.engine.model_id


def test_frame_cap_ends_generation_and_the_response_says_so(service):
    out = run(service, text="Short.", seed=1)
    assert out["finish_reason"] == "frame_cap"
    assert any("frame cap" in warning for warning in out["warnings"])


def test_frame_cap_grows_with_text_and_is_bounded(service):
    s = service.settings
    assert service.frame_cap("a" * 10) == s.extra_frames + math.ceil(s.frames_per_char * 10)
    assert service.frame_cap("a" * 100) > service.frame_cap("a" * 10)
    assert service.frame_cap("a" * 100_000) == s.max_frames


def test_same_seed_gives_identical_audio_and_different_seeds_differ(service):
    a = run(service, text="Same seed, same audio.", seed=123)
    b = run(service, text="Same seed, same audio.", seed=123)
    c = run(service, text="Same seed, same audio.", seed=124)
    assert a["audio_b64"] == b["audio_b64"]
    assert a["audio_b64"] != c["audio_b64"]


def test_without_a_seed_one_is_drawn_returned_and_replays_the_audio(service):
    first = run(service, text="Draw me a seed.")
    second = run(service, text="Draw me a seed.")
    assert isinstance(first["seed_used"], int) and 0 <= first["seed_used"] < 2**32
    assert first["seed_used"] != second["seed_used"]
    replay = run(service, text="Draw me a seed.", seed=first["seed_used"])
    assert replay["audio_b64"] == first["audio_b64"]


def test_cfg_scale_and_diffusion_steps_change_the_audio(service):
    base = run(service, text="Guidance.", seed=5)
    assert base["metrics"]["cfg_scale"] == 1.3 and base["metrics"]["diffusion_steps"] == 10
    cfg = run(service, text="Guidance.", seed=5, cfg_scale=3.0)
    steps = run(service, text="Guidance.", seed=5, diffusion_steps=4)
    assert cfg["metrics"]["cfg_scale"] == 3.0 and steps["metrics"]["diffusion_steps"] == 4
    assert len({base["audio_b64"], cfg["audio_b64"], steps["audio_b64"]}) == 3


def test_temperature_samples_tokens_instead_of_argmax(service):
    """With argmax the tiny model always continues; sampling among the four allowed tokens ends it early."""
    text = "Sampling changes which tokens the model emits."
    cap = service.frame_cap(text)
    greedy = run(service, text=text, seed=11)
    assert greedy["metrics"]["frames"] == cap and greedy["finish_reason"] == "frame_cap"
    sampled = [run(service, text=text, seed=seed, voice_settings={"temperature": 1.0}) for seed in range(11, 17)]
    finished = [out for out in sampled if "error" not in out]
    assert finished, sampled
    assert all(out["metrics"]["frames"] < cap for out in finished)
    assert any(out["finish_reason"] == "end_of_speech" for out in finished)
    again = run(service, text=text, seed=finished[0]["seed_used"], voice_settings={"temperature": 1.0})
    assert again["audio_b64"] == finished[0]["audio_b64"]


def test_speed_stretches_time_and_keeps_the_rest(service):
    normal = run(service, text="Speed test.", seed=3)
    fast = run(service, text="Speed test.", seed=3, voice_settings={"speed": 2.0})
    slow = run(service, text="Speed test.", seed=3, voice_settings={"speed": 0.5})
    assert fast["duration_seconds"] == pytest.approx(normal["duration_seconds"] / 2, rel=0.02)
    assert slow["duration_seconds"] == pytest.approx(normal["duration_seconds"] * 2, rel=0.02)
    assert fast["metrics"]["frames"] == normal["metrics"]["frames"]


def test_reference_audio_is_used_as_the_voice_prompt(service):
    reference = wav_base64(speechlike(2.0, 16000), 16000)
    plain = run(service, text="Clone this voice.", seed=9)
    cloned = run(service, text="Clone this voice.", seed=9, reference_audio=reference)
    assert "error" not in cloned, cloned
    assert cloned["voice_used"] == "reference_audio"
    assert cloned["audio_b64"] != plain["audio_b64"]
    job = GenerationJob([ScriptLine(0, "x")], {0: speechlike(2.0)}, 0, 1.3, 10, 1)
    inputs = service.engine.prepare_inputs(job)
    audio_token = service.engine.loaded.audio_token_id
    # 2 s of voice at 7.5 frames per second: 15 audio placeholders in the prompt
    assert int((inputs["input_ids"] == audio_token).sum()) == 15


def test_errors_name_the_field_and_the_worker_serves_the_next_job(service):
    bad = [
        ({}, "text: required"),
        ({"text": "   \x00\x07  "}, "text: text is empty"),
        ({"text": "x" * 30001}, "text has 30001 characters, more than the limit of 30000"),
        ({"text": "hi", "speaker": "a"}, "speaker: unknown field"),
        ({"text": "hi", "seed": -1}, "seed: "),
        ({"text": "hi", "seed": "1"}, "seed: Input should be a valid integer"),
        ({"text": "hi", "cfg_scale": 0.5}, "cfg_scale: "),
        ({"text": "hi", "cfg_scale": float("nan")}, "cfg_scale: Input should be a finite number"),
        ({"text": "hi", "diffusion_steps": 51}, "diffusion_steps: "),
        ({"text": "hi", "voice_settings": {"speed": 2.5}}, "voice_settings.speed: "),
        ({"text": "hi", "voice_settings": {"temperature": 0}}, "voice_settings.temperature: "),
        ({"text": "hi", "voice_settings": {"pitch": 1}}, "voice_settings.pitch: unknown field"),
        ({"text": "hi", "reference_audio": "not base64!!"}, "reference_audio: not valid base64"),
        ({"text": "hi", "reference_audio": "aGVsbG8gd29ybGQ="}, "reference_audio: not a readable audio file"),
        ({"text": "hi", "voice": "nobody"}, "voice: unknown voice 'nobody'"),
        ({"text": "hi", "voice": "a", "reference_audio": "b"}, "at most one voice source"),
    ]
    for payload, expected in bad:
        out = handle_job({"id": "bad", "input": payload}, service)
        assert set(out) == {"error"}, (payload, out)
        assert expected in out["error"], (payload, out["error"])
        assert "Traceback" not in out["error"]
    assert "error" in handle_job({"id": "bad"}, service)
    good = run(service, text="Still alive.", seed=1)
    assert "audio_b64" in good


def test_an_unexpected_failure_is_a_clean_error_and_the_next_job_succeeds(service, monkeypatch):
    engine = service.engine

    def broken(*args, **kwargs):
        raise RuntimeError("simulated fault inside generate")

    monkeypatch.setattr(engine, "generate", broken)
    out = run(service, text="This one fails.", seed=1)
    assert out == {"error": "internal error during synthesis (RuntimeError): simulated fault inside generate"}
    monkeypatch.undo()
    assert "audio_b64" in run(service, text="This one works.", seed=1)


def test_special_tokens_in_user_text_stay_plain_text(service):
    def ids(text: str):
        job = GenerationJob(single_speaker_script(text), {}, 0, 1.3, 10, 1)
        return service.engine.prepare_inputs(job)["input_ids"][0].tolist()

    tokenizer = service.engine.loaded.processor.tokenizer
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_pad|>", "<|endoftext|>")}
    injected = ids("Hi <|vision_start|><|vision_pad|><|endoftext|> there")
    clean = ids("Hi there")
    # the template's own trailing audio_bos is the only special token in either prompt
    assert [t for t in injected if t in special] == [t for t in clean if t in special] == [clean[-1]]
