"""Unit tests of the pure parts: settings, audio helpers, the temperature sampler, the voice library."""

from __future__ import annotations

import base64
import http.server
import threading

import numpy as np
import pytest
import torch
from conftest import speechlike, wav_base64

from vv_worker import audio
from vv_worker.config import ConfigError, Settings, load_settings, resolve_runtime
from vv_worker.engine.sampling import AllowedTokenSampler
from vv_worker.schema import clean_text
from vv_worker.voices import VoiceError, VoiceLibrary, fetch_url

# --- settings ---------------------------------------------------------------------------------


def test_settings_defaults(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("VV_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert s.model == "vibevoice/VibeVoice-7B-hf"
    assert (s.cfg_scale, s.diffusion_steps, s.max_text_chars) == (1.3, 10, 30000)
    runtime = resolve_runtime(s)
    assert (runtime.device, runtime.dtype, runtime.attn_implementation) == ("cpu", "float32", "sdpa")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VV_MAX_TEXT_CHARS", "lots"),
        ("VV_CFG_SCALE", "nan"),
        ("VV_DIFFUSION_STEPS", "0"),
        ("VV_DTYPE", "fp8"),
        ("VV_DEVICE", "tpu"),
        ("VV_ATTN_IMPLEMENTATION", "flash"),
    ],
)
def test_bad_setting_names_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_gpu_only_choices_are_refused_on_the_cpu():
    with pytest.raises(ConfigError, match="VV_DTYPE=bfloat16"):
        resolve_runtime(Settings(device="cpu", dtype="bfloat16"))
    with pytest.raises(ConfigError, match="VV_ATTN_IMPLEMENTATION=flash_attention_2"):
        resolve_runtime(Settings(device="cpu", attn_implementation="flash_attention_2"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="VV_DEVICE=cuda"):
            resolve_runtime(Settings(device="cuda"))


# --- text and audio ---------------------------------------------------------------------------


def test_clean_text_removes_control_characters_but_keeps_line_breaks():
    assert clean_text("  a\x00b\x1bc\r\nd\te  ") == "abc\nd\te"


def test_base64_accepts_data_uris_and_rejects_garbage():
    raw = base64.b64decode(wav_base64(speechlike(0.5), 24000))
    uri = "data:audio/wav;base64," + base64.b64encode(raw).decode()
    assert audio.decode_base64(uri, "f") == raw
    with pytest.raises(audio.AudioError, match="f: not valid base64"):
        audio.decode_base64("@@@", "f")
    with pytest.raises(audio.AudioError, match="zero bytes"):
        audio.decode_base64("", "f")


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_reference_is_mixed_to_mono_and_resampled_to_24k(rate):
    stereo = np.stack([speechlike(1.5, rate), speechlike(1.5, rate, seed=1)], axis=1)
    raw = base64.b64decode(wav_base64(stereo, rate, subtype="FLOAT"))
    samples, got_rate = audio.read_audio(raw, "f")
    assert samples.ndim == 1 and got_rate == rate
    resampled = audio.resample(samples, rate)
    assert abs(resampled.size - 1.5 * 24000) <= 2


def test_audio_reader_refuses_bad_files():
    with pytest.raises(audio.AudioError, match="not a readable audio file"):
        audio.read_audio(b"RIFF....not really", "f")
    nan = speechlike(0.5)
    nan[100] = np.nan
    with pytest.raises(audio.AudioError, match="NaN"):
        audio.read_audio(base64.b64decode(wav_base64(nan, 24000, subtype="FLOAT")), "f")
    long = base64.b64decode(wav_base64(np.zeros(24000 * 3, dtype=np.float32), 24000))
    with pytest.raises(audio.AudioError, match="at most 2 s"):
        audio.read_audio(long, "f", max_seconds=2)


def test_time_stretch_changes_length_not_pitch():
    rate = 24000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    fast = audio.time_stretch(tone, 2.0)
    assert fast.size == pytest.approx(rate / 2, rel=0.01)
    spectrum = np.abs(np.fft.rfft(fast[2000:-2000]))
    peak_hz = np.argmax(spectrum) * rate / (fast.size - 4000)
    assert peak_hz == pytest.approx(440, rel=0.02)
    assert audio.time_stretch(tone, 1.0) is tone


def test_wav_encoding_is_pcm16_and_clips():
    raw = audio.encode(np.array([0.0, 2.0, -2.0, 0.5], dtype=np.float32), 24000, "wav")
    samples, rate = audio.read_audio(raw, "f")
    assert rate == 24000
    np.testing.assert_allclose(samples, [0.0, 1.0, -1.0, 0.5], atol=1e-4)


# --- temperature sampler ----------------------------------------------------------------------


def _draws(temperature: float, n: int = 4000) -> np.ndarray:
    allowed = [3, 7, 11, 19]
    sampler = AllowedTokenSampler(allowed, temperature, torch.Generator().manual_seed(0))
    scores = torch.full((1, 32), float("-inf"))
    scores[0, allowed] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    scores[0, 5] = 50.0  # a forbidden token with a huge logit is never chosen
    picks = []
    for _ in range(n):
        out = sampler(None, scores.clone())
        assert int(torch.isfinite(out).sum()) == 1
        picks.append(allowed.index(int(out.argmax())))
    return np.bincount(picks, minlength=4) / n


def test_sampler_follows_softmax_of_logits_over_temperature():
    for temperature in (0.5, 1.0, 3.0):
        expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0]) / temperature, dim=0).numpy()
        np.testing.assert_allclose(_draws(temperature), expected, atol=0.03)


def test_sampler_near_zero_temperature_is_argmax():
    assert _draws(0.01, n=500)[0] == 1.0


# --- voice library and URLs -------------------------------------------------------------------


def test_library_lists_only_voices_whose_files_exist(tmp_path):
    (tmp_path / "manifest.json").write_text(
        '{"voices": [{"name": "Ann", "file": "ann.wav", "url": "u", "sha256": "s", "license": "MIT",'
        ' "language": "en", "gender": "female", "description": "d"},'
        ' {"name": "Bob", "file": "bob.wav", "url": "u", "sha256": "s", "license": "MIT",'
        ' "language": "en", "gender": "male", "description": "d"}]}'
    )
    (tmp_path / "ann.wav").write_bytes(base64.b64decode(wav_base64(speechlike(1.0, 16000), 16000)))
    library = VoiceLibrary(tmp_path)
    assert library.names() == ["Ann"]
    assert library.load("ann").size == 24000
    with pytest.raises(VoiceError, match="unknown voice 'Bob'; available voices: Ann"):
        library.load("Bob")


def test_shared_recordings_load_as_library_voices(library_dir):
    library = VoiceLibrary(library_dir)
    assert {"alice", "carter"} <= set(library.names())
    alice = library.load("Alice")
    assert alice.dtype == np.float32 and 9.0 < alice.size / 24000 < 9.6  # 9.27 s at 16 kHz, resampled


def test_library_voice_end_to_end(service, library_dir):
    from vv_worker.handler import handle_job

    original = service.voices
    service.voices = VoiceLibrary(library_dir)
    try:
        named = handle_job({"input": {"text": "Library voice.", "voice": "carter", "seed": 1}}, service)
        default = handle_job({"input": {"text": "Library voice.", "seed": 1}}, service)
    finally:
        service.voices = original
    assert named["voice_used"] == "carter"
    assert default["voice_used"] == "maya"  # VV_DEFAULT_VOICE's default
    assert named["audio_b64"] != default["audio_b64"]
    empty = handle_job({"input": {"text": "No library.", "seed": 1}}, service)
    assert empty["voice_used"] is None and any("without a voice prompt" in w for w in empty["warnings"])


@pytest.fixture
def loopback_server():
    body = base64.b64decode(wav_base64(speechlike(1.0), 24000))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/voice.wav":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()
    server.server_close()


def test_url_fetch_refuses_loopback_by_default(loopback_server, monkeypatch):
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    base, _ = loopback_server
    with pytest.raises(VoiceError, match=r"refused.*non-public address 127\.0\.0\.1"):
        fetch_url(f"{base}/voice.wav", timeout_s=5, max_bytes=10**6)
    with pytest.raises(VoiceError, match="blocked URL scheme 'file'"):
        fetch_url("file:///etc/passwd", timeout_s=5, max_bytes=10**6)


def test_url_fetch_with_private_addresses_allowed(loopback_server, monkeypatch, service):
    from vv_worker.handler import handle_job

    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    base, body = loopback_server
    assert fetch_url(f"{base}/voice.wav", timeout_s=5, max_bytes=10**6) == body
    with pytest.raises(VoiceError, match="size cap"):
        fetch_url(f"{base}/voice.wav", timeout_s=5, max_bytes=1024)
    with pytest.raises(VoiceError, match="HTTP 404"):
        fetch_url(f"{base}/missing.wav", timeout_s=5, max_bytes=10**6)
    out = handle_job({"input": {"text": "From a URL.", "reference_audio_url": f"{base}/voice.wav"}}, service)
    assert out["voice_used"] == "reference_audio_url", out


# --- planning, with no model: the token counter is the only thing it takes from the checkpoint -------------


def _plan(payload: dict, **settings):
    from vv_worker.plan import make_plan

    return make_plan(
        payload,
        settings=load_settings(**settings),
        library=VoiceLibrary(__import__("pathlib").Path("/nonexistent")),
        count_tokens=lambda text: len(text.encode("utf-8")),  # a byte-level count, as the tiny model's BPE is
    )


def test_the_token_limit_is_checked_at_plan_time_in_tokens_not_characters():
    from vv_worker.schema import RequestError

    assert _plan({"text": "a" * 40}, max_text_tokens=40).text_tokens == 40
    with pytest.raises(RequestError, match=r"text: 160 tokens by the model's tokenizer, more than the limit of 40"):
        _plan({"text": "\U0001f600" * 40}, max_text_tokens=40)  # 40 characters, 4 bytes each


def test_check_request_needs_no_model_and_refuses_streaming_where_the_endpoint_cannot():
    from vv_worker.plan import check_request
    from vv_worker.schema import RequestError

    request, script = check_request({"text": "Speaker 2: a\nSpeaker 5: b"}, load_settings())
    assert script.speaker_numbers == [2, 5] and request.output_format == "wav"
    with pytest.raises(RequestError, match="stream: this endpoint does not stream"):
        check_request({"text": "x", "stream": True}, load_settings(), streaming_endpoint=False)
    with pytest.raises(audio.AudioError, match="sample_rate: ogg supports"):
        check_request({"text": "x", "output_format": "ogg", "sample_rate": 44100}, load_settings())


def test_planning_past_the_time_limit_is_a_clean_stop():
    from vv_worker.engine.base import JobStopped

    with pytest.raises(JobStopped, match=r"time limit of 1e-09 s \(VV_JOB_TIMEOUT\)"):
        _plan({"text": "Hi."}, job_timeout=1e-9)


def test_the_default_voice_falls_back_to_the_first_available(tmp_path):
    import json

    import soundfile as sf

    sf.write(tmp_path / "b.wav", speechlike(1.5, 16000), 16000)
    entries = [
        {"name": n, "file": f"{n}.wav", "url": "", "sha256": "", "license": "", "language": "", "gender": ""}
        | {"description": ""}
        for n in ("maya", "b")
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"voices": entries}))
    library = VoiceLibrary(tmp_path)
    assert library.default("maya") == "b"  # maya is listed but its recording is absent
    assert VoiceLibrary(tmp_path / "none").default("maya") is None
