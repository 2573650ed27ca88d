"""The fast engine against transformers' stock ``generate`` on the tiny model (float32, CPU).

Same seed -> same tokens and the same audio within 2e-5 (measured differences are ~3e-6; the
audio's scale is ~0.1). The tiny model's argmax always picks the audio token, so the negative
branch's reset at audio_bos is exercised by the temperature cases, where the four allowed
tokens are drawn uniformly; those cases use cfg 3 so that a wrong negative branch moves the
audio by ~1e-3, far outside the tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import speechlike

from vv_worker.engine.base import EngineError, GenerationJob
from vv_worker.prompt import ScriptLine

ATOL = 2e-5
ONE = [ScriptLine(0, "Hello there, this is a test.")]
TWO = [ScriptLine(0, "Hello there."), ScriptLine(1, "Hi! How are you?"), ScriptLine(0, "Fine, thanks.")]


@pytest.fixture(scope="module")
def engines(tiny_model_dir, empty_voices_dir):
    from vv_worker.config import load_settings
    from vv_worker.engine.fast import FastEngine
    from vv_worker.engine.reference import ReferenceEngine

    settings = load_settings(model=str(tiny_model_dir), voices_dir=empty_voices_dir)
    # One intra-op thread: the tiny model gains nothing from more, and on a busy 2-core machine
    # OpenMP threads that spin against other processes make each run 10-100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ReferenceEngine.load(settings), FastEngine.load(settings)
    torch.set_num_threads(threads)


def run_stock(reference, job: GenerationJob):
    """Stock result (or its EngineError) and the tokens stock generated, read from its output."""
    captured = {}
    original = reference.model.generate

    def spy(*args, **kwargs):
        output = original(*args, **kwargs)
        captured["sequences"] = output.sequences
        return output

    reference.model.generate = spy
    try:
        result = reference.generate(job)
    except EngineError as error:
        result = error
    finally:
        reference.model.generate = original
    prompt = reference.prepare_inputs(job)["input_ids"].shape[1]
    return result, captured["sequences"][0, prompt:].tolist()


def run_fast(fast, job: GenerationJob):
    stream = fast.stream(job)
    try:
        audio = np.concatenate(list(stream))
    except EngineError as error:
        audio = error
    return audio, stream


def job_for(script=ONE, voices=None, **options) -> GenerationJob:
    values = {"seed": 7, "cfg_scale": 1.3, "diffusion_steps": 10, "max_frames": 12, "temperature": None}
    values.update(options)
    return GenerationJob(script=script, voices=voices or {}, **values)


def assert_same(engines, job: GenerationJob):
    reference, fast = engines
    stock, stock_tokens = run_stock(reference, job)
    audio, stream = run_fast(fast, job)
    assert stream.tokens == stock_tokens
    if isinstance(stock, EngineError):
        assert isinstance(audio, EngineError)
        return stock_tokens, None
    assert stream.frames == stock.frames
    assert stream.finish_reason == stock.finish_reason
    assert audio.dtype == np.float32
    assert audio.shape == stock.audio.shape
    assert np.std(stock.audio) > 1e-3  # real signal, not silence on both sides
    np.testing.assert_allclose(audio, stock.audio, rtol=0, atol=ATOL)
    return stock_tokens, audio


def test_single_speaker_without_voice(engines):
    tokens, _ = assert_same(engines, job_for())
    assert tokens == [engines[0].audio_token_id] * 12


def test_single_speaker_with_voice(engines):
    assert_same(engines, job_for(voices={0: speechlike(1.5)}))


def test_two_speakers_two_voices(engines):
    voices = {0: speechlike(1.0, seed=1), 1: speechlike(1.3, seed=2)}
    assert_same(engines, job_for(script=TWO, voices=voices, max_frames=9))


@pytest.mark.parametrize("steps", [1, 5, 10, 20])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_diffusion_steps_and_cfg(engines, steps, cfg):
    assert_same(engines, job_for(voices={0: speechlike(1.0)}, diffusion_steps=steps, cfg_scale=cfg, max_frames=6))


# Seeds whose uniform draws over 16 steps include an audio_bos followed by audio frames (checked below).
RESET_SEEDS = [3, 8, 15, 33]


@pytest.mark.parametrize("seed", RESET_SEEDS)
def test_temperature_sampling_and_negative_reset(engines, seed):
    reference = engines[0]
    job = job_for(
        voices={0: speechlike(1.0)}, seed=seed, temperature=1.0, cfg_scale=3.0, diffusion_steps=5, max_frames=16
    )
    tokens, _ = assert_same(engines, job)
    bos_at = tokens.index(reference.model.config.audio_bos_token_id)
    assert reference.audio_token_id in tokens[bos_at + 1 :], "this seed no longer exercises the reset"


def test_temperature_end_of_speech_and_no_audio(engines):
    reference = engines[0]
    tokens, audio = assert_same(engines, job_for(seed=20, temperature=1.0, max_frames=16))
    assert tokens[-1] == reference.eos_token_id and audio is not None
    tokens, audio = assert_same(engines, job_for(seed=2, temperature=1.0, max_frames=16))
    assert tokens == [reference.eos_token_id] and audio is None  # both refuse: no audio at all


def test_frame_cap(engines):
    _, fast = engines
    result = fast.generate(job_for(max_frames=5))
    assert result.frames == 5 and result.finish_reason == "frame_cap"
    assert result.audio.shape == (5 * 3200,)


def test_stream_concatenates_to_generate(engines):
    _, fast = engines
    job = job_for(voices={0: speechlike(1.0)}, max_frames=7)
    progress = []
    stream = fast.stream(job, on_progress=lambda done, cap: progress.append((done, cap)))
    chunks = list(stream)
    assert [chunk.shape for chunk in chunks] == [(3200,)] * 7
    assert all(chunk.dtype == np.float32 for chunk in chunks)
    assert progress == [(n, 7) for n in range(1, 8)]
    result = fast.generate(job)
    np.testing.assert_array_equal(np.concatenate(chunks), result.audio)
    assert result.frames == stream.frames == 7


def test_seed_and_cfg_change_the_audio(engines):
    """Guards against a comparison that passes for uninteresting reasons."""
    _, fast = engines
    base = fast.generate(job_for(voices={0: speechlike(1.0)})).audio
    other_seed = fast.generate(job_for(voices={0: speechlike(1.0)}, seed=8)).audio
    other_cfg = fast.generate(job_for(voices={0: speechlike(1.0)}, cfg_scale=3.0)).audio
    assert np.abs(base - other_seed).max() > 1e-2
    assert np.abs(base - other_cfg).max() > 1e-3


def test_forced_frames(engines):
    _, fast = engines
    job = job_for(seed=2, temperature=1.0, max_frames=6)  # seed 2 draws eos first when not forced
    stream = fast.stream(job, force_frames=True)
    assert len(list(stream)) == 6 and stream.tokens == [fast.audio_token_id] * 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("steps", [1, 5, 10, 20])
def test_solver_plan_is_bitwise_scheduler_step(steps, dtype):
    import diffusers

    from vv_worker.engine.fast_diffusion import build_plan, solver_update

    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    plan = build_plan(scheduler, steps)
    stock = copy.deepcopy(scheduler)
    stock.set_timesteps(steps)
    generator = torch.Generator().manual_seed(steps)
    expected = torch.randn(1, 64, generator=generator).to(dtype)
    ours, previous = expected.clone(), None
    for index, timestep in enumerate(stock.timesteps):
        output = torch.randn(1, 64, generator=generator).to(dtype)
        expected = stock.step(output, timestep, expected).prev_sample
        ours, previous = solver_update(plan, index, ours, output, previous)
    assert torch.equal(ours, expected)


def test_cuda_graphs_fall_back_to_eager_without_cuda(engines):
    """The CUDA-graph path is untested here (no GPU); on the CPU its safety net must leave the engine eager."""
    from vv_worker.engine.fast_cuda import enable_cuda_graphs

    _, fast = engines
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the CPU fallback only")
    assert enable_cuda_graphs(fast) is False
    assert fast.cuda_graphs is None
    assert fast.generate(job_for(max_frames=2)).frames == 2
