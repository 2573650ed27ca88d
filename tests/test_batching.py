"""Continuous batching: each request's result in a batch equals its solo run (varied-token model).

Solo means the same engine with nothing else in flight. Same tokens, audio within 2e-5.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import speechlike

from vv_worker.engine.base import EngineError, GenerationJob, JobStopped
from vv_worker.prompt import ScriptLine

ATOL = 2e-5
TWO = [ScriptLine(0, "Hello there."), ScriptLine(1, "Hi! How are you?")]


@pytest.fixture(scope="module")
def fast(varied_model_dir, empty_voices_dir):
    from vv_worker.config import load_settings
    from vv_worker.engine.fast import FastEngine

    return FastEngine.load(load_settings(model=str(varied_model_dir), voices_dir=empty_voices_dir, max_batch=4))


def job(text="Hello there, this is a test.", **options) -> GenerationJob:
    values = {"script": [ScriptLine(0, text)], "voices": {}, "seed": 1, "cfg_scale": 1.3}
    values.update({"diffusion_steps": 5, "max_frames": 30, "temperature": None}, **options)
    return GenerationJob(**values)


FOUR = [
    job(seed=1),
    job("The quick brown fox jumps over the lazy dog.", seed=2, voices={0: speechlike(1.5)}, cfg_scale=2.0),
    job(seed=5, script=TWO, voices={0: speechlike(1.0, seed=1), 1: speechlike(1.2, seed=2)}, diffusion_steps=10),
    job("One, two, three.", seed=3, temperature=0.8, cfg_scale=1.0, diffusion_steps=3),
]


def solo(fast, one: GenerationJob):
    stream = fast.stream(one)
    return np.concatenate(list(stream)), stream.tokens


def assert_equal(got, expected):
    (audio, tokens), (expected_audio, expected_tokens) = got, expected
    assert tokens == expected_tokens
    assert audio.shape == expected_audio.shape
    np.testing.assert_allclose(audio, expected_audio, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def solos(fast):
    return [solo(fast, one) for one in FOUR]


def test_a_batch_of_four_equals_each_solo_run(fast, solos):
    fast.peak_batch = 0
    streams = [fast.stream(one) for one in FOUR]
    results = [(np.concatenate(list(stream)), stream.tokens) for stream in streams]
    assert fast.peak_batch == 4
    for got, expected in zip(results, solos, strict=True):
        assert_equal(got, expected)
    assert len({len(tokens) for _, tokens in solos}) > 1  # they leave the batch at different steps


def test_a_request_joins_mid_generation(fast, solos):
    long = job(seed=9, max_frames=24)
    expected = solo(fast, long)
    fast.peak_batch = 0
    first = fast.stream(long, force_frames=False)
    head = [next(first) for _ in range(3)]
    second = fast.stream(FOUR[1])
    rest = list(first)
    assert_equal((np.concatenate(head + rest), first.tokens), expected)
    assert_equal((np.concatenate(list(second)), second.tokens), solos[1])
    assert fast.peak_batch == 2


def test_requests_leave_early_or_are_cancelled_without_disturbing_the_rest(fast, solos):
    forced = job(seed=4, max_frames=20)
    forced_solo = fast.stream(forced, force_frames=True)
    expected = (np.concatenate(list(forced_solo)), forced_solo.tokens)
    keep = fast.stream(forced, force_frames=True)
    short = fast.stream(job(seed=4, max_frames=3), force_frames=True)
    cancelled = fast.stream(FOUR[0])
    next(cancelled)
    cancelled.close()
    assert len(list(short)) == 3 and short.finish_reason == "frame_cap"
    assert_equal((np.concatenate(list(keep)), keep.tokens), expected)


def test_a_failing_request_never_fails_its_batch_mates(fast, solos):
    calls = {"n": 0}

    def stop_after_three() -> str | None:
        calls["n"] += 1
        return "time limit" if calls["n"] >= 3 else None

    stopped = fast.stream(job(seed=6, max_frames=20, should_stop=stop_after_three), force_frames=True)
    broken = fast.stream(job(voices={0: "not audio"}))
    good = [fast.stream(one) for one in FOUR[:2]]
    with pytest.raises(JobStopped, match="time limit"):
        list(stopped)
    assert stopped.frames == 3
    with pytest.raises((ValueError, RuntimeError)):  # the processor cannot read a string as audio
        list(broken)
    for stream, expected in zip(good, solos[:2], strict=True):
        assert_equal((np.concatenate(list(stream)), stream.tokens), expected)


def test_no_audio_is_an_engine_error_for_that_request_only(fast, solos):
    # seeds whose first token is eos on this model make no audio
    ending = [seed for seed in range(200) if fast.loaded.eos_token_id == _first_token(fast, seed)]
    assert ending, "no seed ends at once on this model"
    streams = [fast.stream(job("Hi.", seed=ending[0], temperature=2.0)), fast.stream(FOUR[0])]
    with pytest.raises(EngineError, match="before producing any audio"):
        list(streams[0])
    assert_equal((np.concatenate(list(streams[1])), streams[1].tokens), solos[0])


def _first_token(fast, seed: int) -> int:
    stream = fast.stream(job("Hi.", seed=seed, max_frames=1, temperature=2.0))
    with contextlib.suppress(EngineError):
        list(stream)
    return stream.tokens[0]


def test_close_stops_the_scheduler_after_the_work_in_flight(fast, solos):
    stream = fast.stream(FOUR[0])
    fast.close()
    assert fast._thread is None
    assert_equal((np.concatenate(list(stream)), stream.tokens), solos[0])
    again = fast.stream(FOUR[1])  # a later request starts a new scheduler
    assert_equal((np.concatenate(list(again)), again.tokens), solos[1])
