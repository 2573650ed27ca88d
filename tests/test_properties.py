"""Property-based tests (hypothesis): whatever a job carries, the worker answers with a clean error or valid audio,
and whatever bytes arrive as a reference voice, decoding returns usable samples or raises AudioError.

Example counts are capped so the file stays well under a minute; raise them locally with
``--hypothesis-seed`` / a settings profile when hunting.
"""

from __future__ import annotations

import base64
import io
import math
import os
import struct

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vv_worker.audio import AudioError, ReferenceLimits, decode_base64, prepare_reference
from vv_worker.engine import SAMPLES_PER_FRAME
from vv_worker.handler import handle_job

LIMITS = ReferenceLimits()
CHEAP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- job payloads -----------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_like = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
wild = json_like

# URLs are only blocked schemes or loopback: with SSRF protection on, nothing is ever connected to
SAFE_URLS = st.sampled_from(
    ["file:///etc/passwd", "ftp://127.0.0.1/a.wav", "http://127.0.0.1:9/a.wav", "http://[::1]:9/", "gopher://x", ""]
)
TINY_WAV = base64.b64encode(
    (lambda buffer: (sf.write(buffer, speechlike(1.2, 8000), 8000, format="WAV"), buffer.getvalue())[1])(io.BytesIO())
).decode()
REFERENCES = st.sampled_from(["", "AAAA", "!!", "data:audio/wav;base64,", TINY_WAV, "UklGRg=="])
VALID_TEXT = st.sampled_from(["Hi.", "Hello there", "Speaker 1: a\nSpeaker 2: b", "<|vision_start|> x"])
TEXTS = VALID_TEXT | st.text(max_size=12) | wild
speaker_value = (
    st.sampled_from(["alice", "nobody", ""])
    | st.fixed_dictionaries(
        {}, optional={"voice": wild, "reference_audio": REFERENCES, "reference_audio_url": SAFE_URLS}
    )
    | wild
)
FIELDS = {
    "text": TEXTS,
    "voice": st.sampled_from(["alice", "", "x" * 200]) | wild,
    "reference_audio": REFERENCES | wild,
    "reference_audio_url": SAFE_URLS | st.integers() | st.none(),
    "voice_settings": st.fixed_dictionaries(
        {}, optional={"temperature": st.floats(-1, 3) | wild, "speed": st.floats(0.3, 2.5) | wild, "pitch": wild}
    )
    | wild,
    "seed": st.integers(-5, 2**33) | wild,
    "cfg_scale": st.floats(0, 12) | wild,
    "diffusion_steps": st.integers(-1, 60) | wild,
    "speakers": st.dictionaries(st.sampled_from(["0", "1", "2", "7", "x", "0001"]), speaker_value, max_size=3) | wild,
    "output_format": st.sampled_from(["wav", "flac", "mp3", "ogg", "aac", "WAV"]) | wild,
    "sample_rate": st.sampled_from([8000, 16000, 22050, 44100, 48000, 7999, 96000]) | wild,
    "normalize": st.floats(-60, 0) | st.none() | wild,
    "trim_silence": st.booleans() | wild,
    "action": st.sampled_from(["synthesize", "list_voices", "delete"]) | wild,
    "unknown_field": wild,
}
field_payloads = st.fixed_dictionaries({}, optional=FIELDS)
# mostly-valid requests with one wild field: these reach synthesis, so keep them few
one_wild_field = st.builds(
    lambda text, name, value: {"text": text, "seed": 1, name: value},
    VALID_TEXT,
    st.sampled_from(sorted(set(FIELDS) - {"text", "reference_audio_url", "speakers"})),
    wild,
)


@pytest.fixture(scope="module", autouse=True)
def _ssrf_protection_on():
    """URL fields must be refused, never fetched: make sure the SDK's escape hatch is off."""
    saved = os.environ.pop("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", None)
    yield
    if saved is not None:
        os.environ["RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"] = saved


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Synthesis here is a few tiny steps: on a small shared box, torch's spinning OpenMP threads make such steps
    seconds long whenever another process holds a core. One thread for this module, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_job_output(payload, out) -> None:
    assert isinstance(out, dict)
    event("error" if "error" in out else "success")
    if "error" in out:
        error = out["error"]
        assert isinstance(error, str) and error.strip(), out
        assert "Traceback" not in error and set(out) <= {"error", "refresh_worker"}, out
        assert not error.startswith("internal error"), (payload, error)
        return
    if "voices" in out:  # list_voices
        assert isinstance(out["voices"], list) and "default_voice" in out
        return
    raw = base64.b64decode(out["audio_b64"], validate=True)
    info = sf.info(io.BytesIO(raw))
    assert info.samplerate == out["sample_rate"] and info.channels == 1
    assert out["format"] == payload.get("output_format", "wav")
    assert out["metrics"]["frames"] == out["metrics"]["frame_cap"]  # the tiny model always runs to its cap
    assert math.isfinite(out["duration_seconds"]) and out["duration_seconds"] > 0
    if payload.get("seed") is not None:  # null, like absent, means "draw one"
        assert out["seed_used"] == payload["seed"]
    if out["format"] == "wav" and not payload.get("trim_silence") and payload.get("sample_rate", 24000) == 24000:
        speed = (payload.get("voice_settings") or {}).get("speed", 1.0)
        expected = out["metrics"]["frames"] * SAMPLES_PER_FRAME / speed
        assert abs(info.frames - expected) <= 2, (info.frames, expected)


@CHEAP
@given(payload=json_like)
def test_arbitrary_json_never_raises(service, payload):
    check_job_output(payload, handle_job({"id": "p", "input": payload}, service))


@CHEAP
@given(payload=field_payloads)
def test_payloads_of_real_field_names_never_raise(service, payload):
    check_job_output(payload, handle_job({"id": "p", "input": payload}, service))


@settings(max_examples=30, deadline=None)
@given(payload=one_wild_field)
def test_one_wild_field_in_a_valid_request_never_raises(service, payload):
    check_job_output(payload, handle_job({"id": "p", "input": payload}, service))


@settings(max_examples=30, deadline=None)
@given(job=json_like)
def test_arbitrary_job_envelopes_never_raise(service, job):
    """RunPod hands the handler a job dict; a broken envelope (no input, input not an object) is a clean error."""
    out = handle_job(job, service)
    assert isinstance(out, dict) and isinstance(out.get("error"), str) and out["error"], out


# --- reference audio bytes --------------------------------------------------------------------------


def _file(fmt: str, subtype: str | None, rate: int = 16000, channels: int = 1) -> bytes:
    samples = speechlike(1.3, rate)
    if channels > 1:
        samples = np.stack([samples] * channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


SEED_FILES = {
    "wav16": _file("WAV", "PCM_16"),
    "wav_float_stereo": _file("WAV", "FLOAT", 8000, 2),
    "wav24": _file("WAV", "PCM_24", 22050),
    "flac": _file("FLAC", "PCM_16"),
    "ogg": _file("OGG", "VORBIS"),
    "mp3": _file("MP3", "MPEG_LAYER_III", 24000),
}
# WAV header fields worth lying in: (offset, struct format)
WAV_FIELDS = [(4, "<I"), (20, "<H"), (22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I")]
INTERESTING = [0, 1, 2, 3, 8, 9, 255, 4000, 8000, 200_000, 2**15, 2**16 - 1, 2**31, 2**32 - 1]


@st.composite
def mutated_audio(draw) -> bytes:
    name = draw(st.sampled_from(sorted(SEED_FILES)))
    data = bytearray(SEED_FILES[name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "overwrite", "header", "duplicate"]))
        if op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif op == "overwrite" and data:
            at = draw(st.integers(0, len(data) - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "header" and name.startswith("wav") and len(data) > 44:
            offset, fmt = draw(st.sampled_from(WAV_FIELDS))
            limit = 2 ** (8 * struct.calcsize(fmt)) - 1
            value = draw(st.sampled_from(INTERESTING).map(lambda v, limit=limit: min(v, limit)))
            struct.pack_into(fmt, data, offset, value)
        elif op == "duplicate":
            data += data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def check_reference(raw: bytes) -> None:
    try:
        samples = prepare_reference(raw, "reference_audio", LIMITS)
    except AudioError as error:
        event("AudioError")
        assert str(error).startswith("reference_audio: "), error
        return
    event("accepted")
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32 and samples.ndim == 1
    seconds = samples.size / 24000
    assert LIMITS.min_seconds - 0.01 <= seconds <= LIMITS.max_seconds + 0.01, seconds
    assert np.isfinite(samples).all()


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=3000))
def test_arbitrary_bytes_decode_or_raise_audio_error(raw):
    check_reference(raw)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(min_size=0, max_size=64).map(lambda tail: SEED_FILES["wav16"][:44] + tail))
def test_a_real_header_with_arbitrary_data_decodes_or_raises_audio_error(raw):
    check_reference(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_audio())
def test_mutated_audio_files_decode_or_raise_audio_error(raw):
    check_reference(raw)


def test_the_unmutated_seed_files_are_accepted():
    for name, raw in SEED_FILES.items():
        samples = prepare_reference(raw, "reference_audio", LIMITS)
        assert samples.size > 24000, name


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.from_regex(r"(data:[a-z/]*;base64,)?[A-Za-z0-9+/=\s]{0,80}", fullmatch=True))
def test_decode_base64_returns_bytes_or_raises_audio_error(text):
    try:
        raw = decode_base64(text, "reference_audio")
    except AudioError as error:
        assert str(error) in {"reference_audio: not valid base64", "reference_audio: decodes to zero bytes"}
        return
    assert isinstance(raw, bytes) and raw


def test_resampling_near_float32_max_stays_finite():
    """Regression: finite samples near float32's maximum used to overshoot to inf in soxr."""
    samples = speechlike(1.5, 16000)
    samples = (samples / np.abs(samples).max() * 3.4e38).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    try:
        out = prepare_reference(buffer.getvalue(), "reference_audio", LIMITS)
    except AudioError:
        return
    assert np.isfinite(out).all()
