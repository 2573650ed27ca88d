"""Resident memory stays flat over many requests with references of different lengths, rates and channels.

Each such request allocates large, short-lived buffers of a new size (the base64 body, the decoded blocks, the
mono mix, the trimmed and resampled voice, the encoded output). Nothing leaks, but glibc's allocator kept the
freed memory: before ``memory.release()`` (``malloc_trim(0)`` after each job) the worker grew by hundreds of MB
over such a run. Prints its RSS figures with ``-s``:

    python -m pytest -q tests/test_memory.py -s
"""

from __future__ import annotations

import base64
import io
import time

import psutil
import pytest
import soundfile as sf
from api_server import ApiServer
from conftest import speechlike

REQUESTS = 100
WARM_UP = 10
# (seconds, rate, channels): every request a different length; rates and channel counts in turn
SHAPES = [(2.0 + (k * 7.3) % 26, (48000, 44100, 16000)[k % 3], (2, 1, 1)[k % 3]) for k in range(REQUESTS + WARM_UP)]


def reference(seconds: float, rate: int, channels: int, seed: int) -> str:
    voice = speechlike(seconds, rate, seed=seed)
    samples = voice if channels == 1 else voice[:, None].repeat(channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.fixture(scope="module")
def server(subprocess_env, tmp_path_factory):
    api = ApiServer(dict(subprocess_env, OMP_NUM_THREADS="1"), tmp_path_factory.mktemp("memory"))
    yield api
    api.stop()


def test_rss_stays_flat_over_references_of_different_lengths(server):
    def run(k: int) -> None:
        payload = {"text": "Hi.", "seed": k, "reference_audio": reference(*SHAPES[k], seed=k)}
        status, body = server.runsync(payload, timeout=300)
        assert status == 200 and body.get("status") == "COMPLETED", (k, body)

    started = time.monotonic()
    for k in range(WARM_UP):
        run(k)
    warm = rss_mb(server.pid)
    figures = []
    for k in range(WARM_UP, WARM_UP + REQUESTS):
        run(k)
        if (k - WARM_UP) % 25 == 24:
            figures.append(rss_mb(server.pid))
    end = figures[-1]
    print(
        f"\nmemory: {WARM_UP} + {REQUESTS} requests with references of 2 to 28 s at 16/44.1/48 kHz, 1-2 channels, "
        f"in {time.monotonic() - started:.0f} s; worker RSS MB after warm-up {warm:.0f}, every 25 requests "
        + ", ".join(f"{mb:.0f}" for mb in figures)
        + f" (growth {end - warm:+.0f})"
    )
    # Generous: the largest request's working set (a 28 s 48 kHz stereo reference: its 7 MB base64 body, 5 MB of
    # file, decoded blocks and mono mix, the voice at 24 kHz) is about 40 MB; allocator noise adds a few MB.
    assert end - warm < 100, (warm, figures)
