"""Shared fixtures: one tiny random-weight VibeVoice per test run, built by the project's own script."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from api_server import ApiServer

REPO = Path(__file__).resolve().parents[1]
SHARED_VOICES = REPO.parent / "shared" / "voices"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and spinning threads slow everything on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-vibevoice")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def varied_model_dir(tmp_path_factory) -> Path:
    """The tiny model whose allowed lm_head rows are random: its tokens depend on everything (no ties)."""
    out = tmp_path_factory.mktemp("tiny-vibevoice-varied")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), str(out), "--varied-tokens"],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def empty_voices_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-voices")


@pytest.fixture(scope="session")
def library_dir(tmp_path_factory) -> Path:
    """The repo's manifest with the real recordings from ../shared/voices (skipped when absent)."""
    if not all((SHARED_VOICES / name).is_file() for name in ("en-Alice_woman.wav", "en-Carter_man.wav")):
        pytest.skip("../shared/voices is not present")
    folder = tmp_path_factory.mktemp("voices")
    shutil.copy(REPO / "voices" / "manifest.json", folder / "manifest.json")
    for wav in SHARED_VOICES.glob("*.wav"):
        (folder / wav.name).symlink_to(wav)
    return folder


@pytest.fixture(scope="session")
def service(tiny_model_dir, empty_voices_dir):
    from vv_worker.config import load_settings
    from vv_worker.service import SynthesisService

    # a smaller frame cap than the default keeps the suite quick; every assertion derives from it
    settings = load_settings(
        model=str(tiny_model_dir), voices_dir=empty_voices_dir, frames_per_char=0.25, extra_frames=4
    )
    return SynthesisService.from_settings(settings)


@pytest.fixture(scope="session")
def subprocess_env(tiny_model_dir, empty_voices_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VV_", "RUNPOD_"))}
    env.update(
        VV_MODEL=str(tiny_model_dir),
        VV_VOICES_DIR=str(empty_voices_dir),
        VV_FRAMES_PER_CHAR="0.25",  # the same small frame cap as the in-process service
        VV_EXTRA_FRAMES="4",
        # OpenMP threads spinning against another busy process made 50 ms jobs take seconds
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    return env


def decode_wav(audio_b64: str) -> tuple[np.ndarray, int, sf._SoundFileInfo]:
    raw = base64.b64decode(audio_b64)
    info = sf.info(io.BytesIO(raw))
    samples, rate = sf.read(io.BytesIO(raw), dtype="float32")
    return samples, rate, info


def wav_base64(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def speechlike(seconds: float, rate: int = 24000, seed: int = 0) -> np.ndarray:
    """A voiced, amplitude-modulated signal: stands in for a voice where only its shape matters."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * tone * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def reference_engine(service):
    """transformers' own generate around the service's model and processor (no second load)."""
    from vv_worker.engine.reference import ReferenceEngine

    return ReferenceEngine(service.engine.loaded)


@contextlib.contextmanager
def api_server(env: dict[str, str], cwd: Path) -> Iterator[str]:
    """The local API server (tests/api_server.py) for a ``with`` block; yields its base URL."""
    server = ApiServer(env, cwd)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
