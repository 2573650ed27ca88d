"""The worker takes several jobs at once: concurrent HTTP requests to the local API server are
stepped together by the fast engine and each equals its solo result (varied-token model)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from api_server import ApiServer
from conftest import decode_wav

JOBS = [
    {"text": "Hello there, this is the first request.", "seed": 1},
    {"text": "The quick brown fox jumps over the lazy dog.", "seed": 2, "cfg_scale": 2.0},
    {"text": "One, two, three.", "seed": 3, "diffusion_steps": 3, "voice_settings": {"temperature": 0.8}},
]


def test_concurrent_jobs_are_batched_and_equal_their_solo_runs(varied_model_dir, subprocess_env, tmp_path):
    from vv_worker.handler import concurrent_jobs

    assert concurrent_jobs() == 1  # no service loaded in this process: one job at a time
    env = {**subprocess_env, "VV_MODEL": str(varied_model_dir), "VV_MAX_BATCH": "3"}
    server = ApiServer(env, tmp_path)
    try:
        with ThreadPoolExecutor(len(JOBS)) as pool:
            together = list(pool.map(lambda job: server.runsync(job, timeout=300), JOBS))
        alone = [server.runsync(job, timeout=300) for job in JOBS]
    finally:
        server.stop()
    for (status, body), (solo_status, solo) in zip(together, alone, strict=True):
        assert status == solo_status == 200, (body, solo)
        output, solo_output = body["output"], solo["output"]
        assert solo_output["metrics"]["batch_size"] == 1
        got, expected = decode_wav(output["audio_b64"])[0], decode_wav(solo_output["audio_b64"])[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=2 / 32768)  # 16-bit PCM: within an LSB or two
    assert max(body["output"]["metrics"]["batch_size"] for _, body in together) >= 2
