"""Issue 3: references from anywhere, the voice library, multi-speaker scripts, output formats."""

from __future__ import annotations

import base64
import io
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

from vv_worker import audio
from vv_worker.config import load_settings
from vv_worker.engine import GenerationJob
from vv_worker.handler import handle_job
from vv_worker.prompt import build_conversation, parse_script
from vv_worker.voices import VoiceLibrary


def run(service, **payload) -> dict:
    return handle_job({"id": "t", "input": payload}, service)


def encoded(samples: np.ndarray, rate: int, container: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.fixture
def with_library(service, library_dir):
    original = service.voices
    service.voices = VoiceLibrary(library_dir)
    yield service
    service.voices = original


# --- reference voices in -----------------------------------------------------------------------

INPUT_FORMATS = [
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("FLAC", "PCM_16"),
    ("OGG", "VORBIS"),
    ("OGG", "OPUS"),
    ("MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize(("container", "subtype"), INPUT_FORMATS)
def test_every_supported_input_format_is_decoded(container, subtype):
    rate = 48000 if subtype == "OPUS" else 44100
    raw = encoded(speechlike(2.0, rate), rate, container, subtype)
    voice = audio.prepare_reference(raw, "reference_audio", audio.ReferenceLimits())
    assert voice.dtype == np.float32
    assert voice.size / 24000 == pytest.approx(2.0, abs=0.1)  # codecs pad or trim a few ms
    assert np.sqrt(np.mean(voice**2)) > 0.02


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_stereo_at_any_rate_through_the_handler_with_a_data_uri(service, rate):
    stereo = np.stack([speechlike(1.5, rate), speechlike(1.5, rate, seed=2)], axis=1)
    uri = "data:audio/flac;base64," + b64(encoded(stereo, rate, "FLAC"))
    out = run(service, text="Stereo reference.", reference_audio=uri, seed=1)
    assert out.get("voice_used") == "reference_audio", out


def _bad_reference(service, raw: bytes) -> str:
    out = run(service, text="Bad reference.", reference_audio=b64(raw))
    assert set(out) == {"error"}
    return out["error"]


def test_invalid_references_are_errors_never_a_fallback(service):
    voice = speechlike(2.0)
    assert "reference_audio: not valid base64" in run(service, text="x", reference_audio="***")["error"]
    assert "not a readable audio file" in _bad_reference(service, b"just some text, not audio at all")
    assert "silent" in _bad_reference(service, encoded(np.zeros(48000, np.float32), 24000, "WAV"))
    nan = voice.copy()
    nan[10] = np.nan
    assert "NaN" in _bad_reference(service, encoded(nan, 24000, "WAV", "FLOAT"))
    short = _bad_reference(service, encoded(speechlike(0.5), 24000, "WAV"))
    assert "0.50 s of voice after trimming silence; allowed: 1 to 60 s" in short
    long = _bad_reference(service, encoded(speechlike(61.0), 24000, "WAV"))
    assert "61.00 s of voice" in long and "allowed: 1 to 60 s" in long
    nine = np.stack([voice] * 9, axis=1)
    assert "9 channels; at most 8" in _bad_reference(service, encoded(nine, 24000, "WAV"))
    assert "sample rate 4000 Hz is outside 8000 to 192000 Hz" in _bad_reference(
        service, encoded(speechlike(2.0, 4000), 4000, "WAV")
    )
    flac = encoded(voice, 24000, "FLAC")
    assert "corrupt or truncated" in _bad_reference(service, flac[: len(flac) // 2])


def test_header_declaring_an_hour_is_refused_before_decoding(service):
    hour = encoded(np.zeros(8000 * 3600, dtype=np.int16), 8000, "FLAC", "PCM_16")  # 89 kB: silence compresses
    assert len(hour) < 200_000
    with pytest.raises(audio.AudioError, match=r"declares 3600\.0 s of audio; at most 600 s at 8000 Hz is decoded"):
        audio.read_audio(hour, "reference_audio")
    assert "declares 3600.0 s" in _bad_reference(service, hour)


def test_decoding_is_capped_while_it_runs():
    raw = encoded(speechlike(5.0, 48000), 48000, "OGG", "OPUS")
    with pytest.raises(audio.AudioError, match=r"(declares|decodes to more than) .*2 s"):
        audio.read_audio(raw, "reference_audio", max_seconds=2)


def test_leading_and_trailing_silence_is_trimmed():
    voice = speechlike(2.0)
    padded = np.concatenate([np.zeros(24000, np.float32), voice, np.zeros(36000, np.float32)])
    trimmed = audio.prepare_reference(encoded(padded, 24000, "WAV", "FLOAT"), "f", audio.ReferenceLimits())
    assert trimmed.size / 24000 == pytest.approx(2.0, abs=0.02)


def test_real_speech_recordings_decode_trim_and_resample(library_dir):
    for name, seconds in (("en-Alice_woman.wav", 9.27), ("en-Carter_man.wav", 27.73)):
        raw = (library_dir / name).read_bytes()
        voice = audio.prepare_reference(raw, name, audio.ReferenceLimits())
        assert 0.8 * seconds < voice.size / 24000 <= seconds + 0.01
        assert -40 < audio.dbfs(voice) < -6


# --- the voice library ---------------------------------------------------------------------


def test_list_voices_returns_the_library_with_metadata(with_library):
    out = run(with_library, action="list_voices")
    names = [voice["name"] for voice in out["voices"]]
    assert names == ["alice", "carter", "frank", "maya"]
    assert out["default_voice"] == "maya"
    assert out["voices"][1] == {
        "name": "carter",
        "language": "en",
        "gender": "male",
        "description": "English, male, 28 s",
        "license": "MIT",
    }
    assert "list_voices takes no other fields, got text" in run(with_library, action="list_voices", text="x")["error"]
    assert "action: Input should be 'synthesize'" in run(with_library, action="dance", text="x")["error"]


def test_voice_prompts_are_encoded_once_and_match_stock_generate(reference_engine):
    engine = reference_engine
    voice = speechlike(2.0, seed=21)
    job = GenerationJob(
        parse_script("Cache me.").lines, {0: voice}, seed=5, cfg_scale=1.3, diffusion_steps=10, max_frames=5
    )
    misses = engine.voice_cache.misses
    first = engine.generate(job)
    assert engine.voice_cache.misses == misses + 1
    hits = engine.voice_cache.hits
    second = engine.generate(job)
    assert engine.voice_cache.hits == hits + 1 and engine.voice_cache.misses == misses + 1
    np.testing.assert_array_equal(first.audio, second.audio)

    batch = engine.loaded.processor.apply_chat_template(
        build_conversation(job.script, job.voices), tokenize=True, return_dict=True, return_tensors="pt"
    )
    torch.manual_seed(job.seed)
    with torch.inference_mode():
        stock = engine.loaded.model.generate(
            **batch, max_new_tokens=5, guidance_scale=1.3, num_diffusion_steps=10, return_dict_in_generate=True
        )
    np.testing.assert_array_equal(stock.audio[0].reshape(-1).numpy(), first.audio)


def test_two_voices_match_stock_generate_closely(reference_engine):
    engine = reference_engine
    voices = {0: speechlike(2.0, seed=1), 1: speechlike(1.4, seed=2)}
    script = parse_script("Speaker 1: One.\nSpeaker 2: Two.").lines
    job = GenerationJob(script, voices, seed=8, cfg_scale=1.3, diffusion_steps=10, max_frames=4)
    ours = engine.generate(job).audio
    batch = engine.loaded.processor.apply_chat_template(
        build_conversation(script, voices), tokenize=True, return_dict=True, return_tensors="pt"
    )
    torch.manual_seed(job.seed)
    with torch.inference_mode():
        stock = engine.loaded.model.generate(
            **batch, max_new_tokens=4, guidance_scale=1.3, num_diffusion_steps=10, return_dict_in_generate=True
        )
    # stock pads the shorter voice to the longer one before encoding; we encode each alone
    np.testing.assert_allclose(stock.audio[0].reshape(-1).numpy(), ours, atol=1e-5)


# --- multi-speaker scripts -----------------------------------------------------------------


def test_two_speaker_script_end_to_end(with_library):
    script = "Speaker 1: Hello, how are you?\nSpeaker 2: Fine, thanks.\nSpeaker 1: Good to hear."
    out = run(with_library, text=script, seed=3, speakers={"2": "maya"})
    assert "error" not in out, out
    assert out["speakers_used"] == {"1": "alice", "2": "maya"}
    assert out["voice_used"] == "alice"
    inputs = with_library.engine.prepare_inputs(
        GenerationJob(parse_script(script).lines, {0: speechlike(1.0), 1: speechlike(1.0)}, 0, 1.3, 10, 1)
    )
    text = with_library.engine.loaded.processor.tokenizer.decode(inputs["input_ids"][0])
    assert " Speaker 0: Hello, how are you?\n Speaker 1: Fine, thanks.\n Speaker 0: Good to hear.\n" in text
    assert text.count("<|vision_start|>") == 3  # one per voice, one opening the speech output


def test_four_speakers_get_distinct_library_voices_deterministically(with_library):
    script = "\n".join(f"Speaker {n}: Line from speaker {n}." for n in (0, 1, 2, 3))
    first = run(with_library, text=script, seed=2)
    assert first["speakers_used"] == {"0": "maya", "1": "alice", "2": "carter", "3": "frank"}  # the default first
    mixed = run(
        with_library,
        text=script,
        seed=2,
        voice="frank",
        speakers={"2": {"reference_audio": b64(encoded(speechlike(2.0), 24000, "WAV"))}},
    )
    assert mixed["speakers_used"] == {"0": "frank", "1": "maya", "2": "reference_audio", "3": "alice"}


def test_script_errors(service):
    five = "\n".join(f"Speaker {n}: hi" for n in range(5))
    assert (
        "the script has 5 distinct speakers (0, 1, 2, 3, 4); VibeVoice supports at most 4"
        in run(service, text=five)["error"]
    )
    two = "Speaker 1: a\nSpeaker 2: b"
    assert (
        "speakers.3: no line is spoken by Speaker 3; speakers: 1, 2"
        in run(service, text=two, speakers={"3": "x"})["error"]
    )
    both = run(service, text=two, voice="alice", speakers={"1": "alice"})["error"]
    assert "two voice sources for Speaker 1: voice and speakers.1" in both
    assert "unknown voice 'nobody'" in run(service, text=two, speakers={"2": "nobody"})["error"]
    assert "a script must start with a 'Speaker N:' line" in run(service, text="hello\nSpeaker 1: hi")["error"]
    for marker in ("Speech output:", "Voice input:", "Text input:"):
        assert f"contains {marker!r}" in run(service, text=f"Please say {marker} now")["error"]


def test_speakers_without_enough_library_voices_get_no_prompt_and_a_warning(service):
    out = run(service, text="Speaker 1: a\nSpeaker 2: b", seed=1)
    assert out["speakers_used"] == {"1": None, "2": None}
    assert any("Speaker 2 was generated without a voice prompt" in w for w in out["warnings"])


# --- audio out -----------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["wav", "flac", "mp3", "ogg"])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_every_output_format_decodes_back(service, output_format, rate):
    out = run(service, text="Formats.", seed=4, output_format=output_format, sample_rate=rate)
    assert "error" not in out, out
    raw = base64.b64decode(out["audio_b64"])
    info = sf.info(io.BytesIO(raw))
    expected = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}[output_format]
    assert info.format == expected and info.samplerate == rate == out["sample_rate"] and info.channels == 1
    assert (
        out["mime_type"]
        == {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}[output_format]
    )
    frames_seconds = out["metrics"]["frames"] * 3200 / 24000
    assert out["duration_seconds"] == pytest.approx(frames_seconds, abs=1e-3)
    assert info.duration == pytest.approx(frames_seconds, abs=0.08)  # lossy codecs add a little padding


def test_output_rate_the_codec_cannot_take_is_an_error(service):
    assert (
        "sample_rate: ogg supports 8000, 12000, 16000, 24000, 48000 Hz, not 44100"
        in run(service, text="x", output_format="ogg", sample_rate=44100)["error"]
    )


def test_loudness_normalisation_hits_the_target_without_clipping(service):
    out = run(service, text="Make it loud enough.", seed=6, normalize=-23.0)
    samples, rate = sf.read(io.BytesIO(base64.b64decode(out["audio_b64"])), dtype="float32")
    assert out["loudness_lufs"] == pytest.approx(-23.0, abs=0.5)
    assert audio.integrated_loudness(samples, rate) == pytest.approx(-23.0, abs=0.5)
    loud = run(service, text="Make it loud enough.", seed=6, normalize=-5.0)
    peak = np.abs(sf.read(io.BytesIO(base64.b64decode(loud["audio_b64"])), dtype="float32")[0]).max()
    assert peak <= audio.PEAK_CEILING + 1e-3  # limited, not clipped
    assert loud["loudness_lufs"] > out["loudness_lufs"]


def test_trim_silence_shortens_padded_output():
    voice = speechlike(1.0)
    padded = np.concatenate([np.zeros(12000, np.float32), voice, np.zeros(12000, np.float32)])
    assert audio.trim_silence(padded, 24000).size == pytest.approx(voice.size, abs=240)


def test_oversize_output_without_a_bucket_says_the_size_the_limit_and_the_ways_out(service, monkeypatch):
    for name in ("bucket_endpoint_url", "bucket_access_key_id", "bucket_secret_access_key"):
        monkeypatch.setattr(service.settings, name, None)
    monkeypatch.setattr(service.settings, "max_inline_bytes", 2000)
    error = run(service, text="Too big to return inline.", seed=1)["error"]
    assert "over the inline limit of 2,000 bytes" in error and "bytes, over" in error
    assert "compressed output_format (mp3 or ogg)" in error and "BUCKET_ENDPOINT_URL" in error


def test_oversize_output_is_uploaded_to_the_bucket(service, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # read from BUCKET_* by Settings at start, as on RunPod
        bucket = load_settings(
            BUCKET_ENDPOINT_URL=endpoint, BUCKET_ACCESS_KEY_ID="test", BUCKET_SECRET_ACCESS_KEY="test"
        )
        for name in ("bucket_endpoint_url", "bucket_access_key_id", "bucket_secret_access_key"):
            monkeypatch.setattr(service.settings, name, getattr(bucket, name))
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test").create_bucket(
            Bucket="vv-test"
        )
        monkeypatch.setattr(service.settings, "max_inline_bytes", 2000)
        monkeypatch.setattr(service.settings, "bucket_name", "vv-test")
        out = run(service, text="Uploaded, not inline.", seed=1)
        assert "audio_b64" not in out and out["audio_url"].startswith(endpoint), out
        with urllib.request.urlopen(out["audio_url"], timeout=10) as response:
            body = response.read()
        assert len(body) == out["audio_bytes"]
        assert sf.info(io.BytesIO(body)).samplerate == 24000
    finally:
        server.stop()
