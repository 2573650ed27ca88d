"""Several generation jobs of one request from a thread pool, on the tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vv_worker.engine.base import JobStopped
from vv_worker.jobs import run_jobs, workers_for


def jobs_for(service, texts: list[str], seed: int = 3):
    return [service.plan({"text": text, "seed": seed}).job for text in texts]


def test_results_come_back_in_order_and_match_one_at_a_time(service):
    texts = ["First part here.", "The second one.", "And a third."]
    jobs = jobs_for(service, texts)
    alone = [service.engine.generate(job) for job in jobs]
    reports: list[tuple[int, int]] = []
    together = run_jobs(service.engine, jobs, on_progress=lambda done, cap: reports.append((done, cap)))
    for a, b in zip(alone, together, strict=True):
        assert a.frames == b.frames  # batched rows agree with one-at-a-time runs to float rounding
        np.testing.assert_allclose(a.audio, b.audio, rtol=0, atol=1e-5)
    total_cap = sum(job.max_frames for job in jobs)
    assert {cap for _, cap in reports} == {total_cap}
    assert reports[-1][0] == total_cap  # every finished job counts as its whole cap
    if workers_for(service.engine) == 1:  # one job after another: the total only grows
        assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_a_batching_engine_gets_its_batch_size_in_workers_and_others_one(service):
    from vv_worker.engine.oracle import OracleEngine

    assert workers_for(service.engine) == service.engine.max_batch > 1
    assert workers_for(OracleEngine(service.engine.loaded)) == 1  # one request at a time


def test_the_first_failure_stops_the_rest_and_is_raised(service):
    jobs = jobs_for(service, ["One.", "Two.", "Three."])
    jobs[1] = dataclasses.replace(jobs[1], should_stop=lambda: "stopped on purpose")
    with pytest.raises(JobStopped, match="stopped on purpose"):
        run_jobs(service.engine, jobs)


def test_no_jobs_no_results(service):
    assert run_jobs(service.engine, []) == []
