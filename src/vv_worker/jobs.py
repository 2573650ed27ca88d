"""Several generation jobs of one request (segments, chunks, pieces between pauses), run from a thread pool.

Jobs are submitted together so an engine that batches concurrent calls (the fast engine: it has
``max_batch``) steps them as one batch; up to ``max_batch`` are in flight at once. Other engines (oracle,
reference) take one request at a time, so their jobs run one after another. Progress is reported over all
the jobs together; the first failure stops the others (at their next generation step) and is raised.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .engine.base import Engine, GenerationJob, GenerationResult, ProgressCallback


def workers_for(engine: Engine) -> int:
    """Jobs of one request in flight at once: the engine's batch size, or 1 for an engine that does not batch."""
    return max(1, int(getattr(engine, "max_batch", None) or 1))


class _Progress:
    """Frames done over frame caps, summed over every job; calls come from the pool's threads."""

    def __init__(self, caps: list[int], report: ProgressCallback):
        self.caps = caps
        self.done = [0] * len(caps)
        self.total_cap = sum(caps)
        self.report = report
        self.lock = threading.Lock()

    def update(self, index: int, frames: int) -> None:
        with self.lock:
            self.done[index] = frames
            total = sum(self.done)
        self.report(total, self.total_cap)

    def for_job(self, index: int) -> ProgressCallback:
        return lambda frames, _cap: self.update(index, frames)


class _Failure:
    """The first error of any job; once set, the other jobs stop at their next step and unstarted ones never run."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def record(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error

    def reason(self) -> str | None:
        return "another part of this request failed" if self.error is not None else None


def run_jobs(
    engine: Engine, jobs: list[GenerationJob], on_progress: ProgressCallback | None = None, workers: int | None = None
) -> list[GenerationResult]:
    """Every job's result, in the order of ``jobs``; the first job error is raised."""
    progress = _Progress([job.max_frames for job in jobs], on_progress) if on_progress else None
    failure = _Failure()

    def run(index: int, job: GenerationJob) -> GenerationResult | None:
        if failure.error is not None:
            return None
        own_stop = job.should_stop

        def should_stop() -> str | None:
            return failure.reason() or (own_stop() if own_stop is not None else None)

        try:
            result = engine.generate(
                dataclasses.replace(job, should_stop=should_stop),
                on_progress=progress.for_job(index) if progress else None,
            )
        except BaseException as error:
            failure.record(error)
            raise
        if progress:
            progress.update(index, job.max_frames)  # a finished job counts as its whole cap
        return result

    with ThreadPoolExecutor(max_workers=workers or workers_for(engine), thread_name_prefix="vv-job") as pool:
        futures = [pool.submit(run, index, job) for index, job in enumerate(jobs)]
        wait(futures, return_when=FIRST_EXCEPTION)
        if failure.error is not None:
            for future in futures:
                future.cancel()
    if failure.error is not None:
        raise failure.error
    return [future.result() for future in futures]
