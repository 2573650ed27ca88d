#!/usr/bin/env python
"""One command for a GPU machine: the CUDA checks, the 7B-shape benchmark and cold start, as one markdown table.

    python scripts/gpu_check.py [--device cuda] [--frames 64] [--batch 8] [--repeats 3] [--cold-start-dir DIR]
    python scripts/gpu_check.py --dry-run      # the same code on the CPU, tiny model and sizes (CI runs it)

Rows, in order:

1. fast engine vs the oracle (the original loop) on the varied-token tiny model, float32 on the
   device (TF32 off): same tokens, audio within 2e-5, on requests with voices, two speakers,
   other step counts and a temperature;
2. the same requests from one thread each at once (batched) vs their solo runs: same tokens and audio;
3. bfloat16: the fast engine's audio against the float32 oracle's (relative L2 error), next to the
   error of the oracle itself run in bfloat16, on the forced-frames tiny model;
4. the 7B shapes (random weights, bf16, forced frames) through ``scripts/bench.py``'s functions:
   stock ``generate`` and the fast engine at batch 1, then ``--batch`` requests run one after
   another and at once; time to first audio and peak ``torch.cuda.max_memory_allocated`` with each;
5. cold start: a fresh handler process serving one request from random 7B safetensors on local disk.

Every row says whether it was measured, passed, failed or was skipped (and why). ``--dry-run`` runs
every row on the CPU with the tiny model and tiny sizes, marked as such: its figures are no GPU
figures. The exit code is 1 when a check fails or a row raises, else 0. docs/BENCHMARKS.md says how
to bring the wheels a GPU machine without internet lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

ATOL = 2e-5  # fast vs oracle and batched vs solo in float32: measured differences are ~3e-6 on audio of scale ~0.1
# distributions the engine and the benchmark import; the cold start (the handler) needs the rest
ENGINE_NEEDS = ["torch", "transformers", "diffusers", "pydantic", "pydantic_settings", "tokenizers", "safetensors"]
HANDLER_NEEDS = ["runpod", "soundfile", "soxr"]
# the targets of issues 10 and 11 (H100, 7B shapes, bf16, 10 steps)
TARGETS = {
    "fast_b1": "RTF <= 0.08, >= 5x stock, first audio <= 0.3 s, peak <= 22 GB",
    "batched": "aggregate RTF <= 0.02, each request RTF < 1, peak <= 30 GB",
    "cold": "<= 15 s",
}


@dataclass
class Row:
    check: str
    setting: str
    result: str
    target: str
    status: str


@dataclass(frozen=True)
class Plan:
    """What one run measures: the GPU sizes, or the dry run's tiny ones on the CPU."""

    device: str
    bench_config: str
    bench_dtype: str
    frames: int
    steps: int
    batch: int
    warmup: int
    repeats: int
    check_frames: int
    dry_run: bool

    @property
    def measured(self) -> str:
        return "measured (dry run: CPU, tiny; not a GPU figure)" if self.dry_run else "measured"


def missing(modules: list[str]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def transformers_too_old() -> str | None:
    version = importlib.metadata.version("transformers")
    major, minor = (int(part) for part in version.split(".")[:2])
    return None if (major, minor) >= (5, 24) else f"transformers {version} (VibeVoice needs >= 5.24)"


@contextlib.contextmanager
def exact_float32():
    """TF32 off for the float32 checks, so they test the engine's logic, not the matmul mode."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def load_tiny(folder: Path, device: str, dtype: str):
    """A saved tiny checkpoint as a LoadedModel on ``device`` in ``dtype`` (any dtype, the CPU included)."""
    import torch
    from transformers import AutoProcessor, VibeVoiceForConditionalGeneration

    from vv_worker.config import Runtime
    from vv_worker.engine.loaded import LoadedModel

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = VibeVoiceForConditionalGeneration.from_pretrained(
        folder, dtype=getattr(torch, dtype), attn_implementation={"text_config": "sdpa"}, local_files_only=True
    )
    return LoadedModel(model.to(device).eval(), processor, Runtime(device, dtype, "sdpa"), str(folder))


def check_jobs(frames: int) -> list:
    """Requests that differ in everything a batch mixes: texts, speakers, voices, seeds, cfg, steps, temperature."""
    from bench import speechlike

    from vv_worker.engine.base import GenerationJob
    from vv_worker.prompt import ScriptLine

    one = [ScriptLine(0, "Hello there, this is a test.")]
    two = [ScriptLine(0, "Hello there."), ScriptLine(1, "Hi! How are you?"), ScriptLine(0, "Fine, thanks.")]
    voice_a, voice_b = speechlike(1.5, pitch=130.0), speechlike(2.0, pitch=210.0)

    def job(script, voices, seed, cfg, steps, temperature=None):
        return GenerationJob(script, voices, seed, cfg, steps, frames, temperature)

    return [
        job(one, {}, 7, 1.3, 10),
        job(two, {0: voice_a, 1: voice_b}, 3, 2.0, 5),
        job(one, {0: voice_b}, 11, 3.0, 10, temperature=0.9),
        job(two, {}, 5, 1.3, 20),
    ]


def outcome(engine, job) -> tuple[object, list[int]]:
    """(audio, tokens), or (the EngineError, tokens) when the model ended before any audio."""
    import numpy as np

    from vv_worker.engine.base import EngineError

    if hasattr(engine, "stream"):
        stream = engine.stream(job)
        try:
            return np.concatenate(list(stream)), stream.tokens
        except EngineError as error:
            return error, stream.tokens
    try:
        result = engine.generate(job)
    except EngineError as error:
        return error, getattr(error, "tokens", None)
    return result.audio, result.extra["tokens"]


def compare(expected, actual) -> tuple[bool, float]:
    """(tokens and outcome agree, max abs audio difference) of two outcomes."""
    import numpy as np

    (audio_a, tokens_a), (audio_b, tokens_b) = expected, actual
    if isinstance(audio_a, Exception) or isinstance(audio_b, Exception):
        both = isinstance(audio_a, Exception) and isinstance(audio_b, Exception)
        return both and tokens_a == tokens_b, 0.0
    if tokens_a != tokens_b or audio_a.shape != audio_b.shape:
        return False, float("inf")
    return True, float(np.abs(audio_a - audio_b).max())


def verdict(agree: int, total: int, diff: float) -> str:
    return "PASS" if agree == total and diff <= ATOL else "FAIL"


def correctness_rows(plan: Plan, folders: dict[str, Path]) -> list[Row]:
    """Rows 1 and 2, float32 on the device."""
    from vv_worker.engine.fast import FastEngine
    from vv_worker.engine.oracle import OracleEngine

    jobs = check_jobs(plan.check_frames)
    setting = (
        f"{plan.device}, tiny varied-token model, float32 (TF32 off), {len(jobs)} requests x {plan.check_frames} frames"
    )
    with exact_float32():
        loaded = load_tiny(folders["varied"], plan.device, "float32")
        oracle, fast = OracleEngine(loaded), FastEngine(loaded, max_batch=len(jobs))
        expected = [outcome(oracle, job) for job in jobs]
        solo = [outcome(fast, job) for job in jobs]
        pairs = [compare(e, s) for e, s in zip(expected, solo, strict=True)]
        batched: list = [None] * len(jobs)

        def request(index: int) -> None:
            batched[index] = outcome(fast, jobs[index])

        threads = [threading.Thread(target=request, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(item is None for item in batched):
            raise RuntimeError("a batched request raised something other than an EngineError (see stderr)")
        batch_pairs = [compare(s, b) for s, b in zip(solo, batched, strict=True)]
    frames = [len(audio) // 3200 if not isinstance(audio, Exception) else 0 for audio, _ in expected]
    rows = []
    for name, results in (("fast engine vs oracle", pairs), ("batched vs solo (fast engine)", batch_pairs)):
        agree = sum(ok for ok, _ in results)
        diff = max(d for _, d in results)
        rows.append(
            Row(
                name,
                setting,
                f"same tokens {agree}/{len(jobs)}, max abs diff {diff:.3g} (frames per request: {frames})",
                f"same tokens, max abs diff <= {ATOL:g}",
                verdict(agree, len(jobs), diff),
            )
        )
    return rows


def bf16_row(plan: Plan, folders: dict[str, Path]) -> Row:
    """Row 3: bf16 fast engine and bf16 oracle against the float32 oracle, forced-frames tiny model."""
    import numpy as np

    from vv_worker.engine.fast import FastEngine
    from vv_worker.engine.oracle import OracleEngine

    jobs = [job for job in check_jobs(plan.check_frames) if job.temperature is None]

    def audio(engine) -> np.ndarray:
        return np.concatenate([engine.generate(job).audio for job in jobs])

    with exact_float32():
        reference = audio(OracleEngine(load_tiny(folders["forced"], plan.device, "float32")))
    half = load_tiny(folders["forced"], plan.device, "bfloat16")
    fast, oracle = audio(FastEngine(half, max_batch=1)), audio(OracleEngine(half))

    def relative(values: np.ndarray) -> float:
        return float(np.linalg.norm(values - reference) / max(np.linalg.norm(reference), 1e-12))

    fast_error, oracle_error = relative(fast), relative(oracle)
    # bf16 cannot be exact; the fast engine must not lose more than the original loop does in bf16
    limit = 2 * oracle_error + 1e-3
    return Row(
        "bf16 vs float32 oracle",
        f"{plan.device}, tiny forced-frames model, {len(jobs)} requests x {plan.check_frames} frames",
        f"relative L2 error: fast bf16 {fast_error:.3g}, oracle bf16 {oracle_error:.3g}",
        "fast <= 2 x oracle's + 1e-3",
        "PASS" if fast_error <= limit else "FAIL",
    )


def bench_rows(plan: Plan) -> list[Row]:
    """Rows 4: stock and fast at batch 1, then solo vs batched, via bench.py's functions."""
    import bench

    engine = bench.build_engine(plan.bench_config, plan.device, plan.bench_dtype, max(plan.batch, 1))
    jobs = bench.make_jobs(plan.batch, plan.frames, plan.steps, 1.3, 1, 0.0)
    setting = f"{plan.device}, {plan.bench_config} shapes, {plan.bench_dtype}, {plan.frames} frames, {plan.steps} steps"
    engines = bench.compare_engines(engine, jobs[0], plan.device, plan.warmup, plan.repeats)
    batch = bench.compare_batch(engine, jobs, plan.device, plan.warmup, plan.repeats)
    engine.close()  # the scheduler thread holds the model until it stops
    del engine
    _free(plan.device)
    rows = []
    for name in ("stock", "fast"):
        row = engines[name]
        extra = f", {engines['speedup']:.2f}x stock" if name == "fast" else ""
        result = (
            f"{row['ms_per_frame']:.1f} ms/frame, RTF {row['rtf']:.3f}{extra}, first audio "
            f"{row['first_audio_s']:.3f} s, peak {row['peak_memory_gib']:.2f} GiB"
        )
        target = TARGETS["fast_b1"] if name == "fast" and not plan.dry_run else "-"
        rows.append(Row(f"{name}, batch 1", f"{setting}, prompt {engines['prompt_tokens']} tokens", result, target,
                        _judged(plan, target, name == "fast" and _fast_b1_met(engines))))  # fmt: skip
    rows.append(
        Row(
            "fast vs stock audio, batch 1",
            setting,
            f"max abs diff {engines['max_abs_diff']:.3g}, relative L2 {engines['relative_l2']:.3g}",
            "-",
            plan.measured,
        )
    )
    for name in ("solo", "batched"):
        row = batch[name]
        label = f"fast, {plan.batch} one after another" if name == "solo" else f"fast, {plan.batch} at once"
        result = (
            f"{row['frames_per_s']:.1f} frames/s, aggregate RTF {row['aggregate_rtf']:.3f}, per-request RTF max "
            f"{row['rtf_per_request_max']:.3f}, first audio median {row['first_audio_s_median']:.3f} s max "
            f"{row['first_audio_s_max']:.3f} s, peak {row['peak_memory_gib']:.2f} GiB"
        )
        if name == "batched":
            result += (
                f", {batch['aggregate_speedup']:.2f}x solo, max abs diff vs solo {batch['max_abs_diff_vs_solo']:.3g}"
            )
        target = TARGETS["batched"] if name == "batched" and not plan.dry_run else "-"
        met = name == "batched" and _batched_met(batch)
        rows.append(Row(label, setting, result, target, _judged(plan, target, met)))
    return rows


def _fast_b1_met(engines: dict) -> bool:
    fast = engines["fast"]
    return (fast["rtf"] <= 0.08 and engines["speedup"] >= 5 and fast["first_audio_s"] <= 0.3
            and fast["peak_memory_gib"] * 2**30 <= 22e9)  # fmt: skip


def _batched_met(batch: dict) -> bool:
    row = batch["batched"]
    return row["aggregate_rtf"] <= 0.02 and row["rtf_per_request_max"] < 1 and row["peak_memory_gib"] * 2**30 <= 30e9


def _judged(plan: Plan, target: str, met: bool) -> str:
    if target == "-":
        return plan.measured
    return f"{plan.measured}, target {'met' if met else 'missed'}"


def cold_start_row(plan: Plan, folder: Path) -> Row:
    import bench

    result = bench.cold_start(plan.bench_config, plan.device, plan.bench_dtype, folder)
    wrote = f"; wrote the weights first in {result['write_s']:.1f} s" if result["write_s"] is not None else ""
    setting = f"{plan.device}, random {plan.bench_config} safetensors in {folder}, {plan.bench_dtype}"
    if result["exit_code"] != 0:
        print("cold start output (last lines):\n  " + "\n  ".join(result["output_tail"]), file=sys.stderr)
        return Row("cold start to first request", setting, f"handler exited with {result['exit_code']}{wrote}", "-",
                   "FAIL (output on stderr)")  # fmt: skip
    target = TARGETS["cold"] if not plan.dry_run else "-"
    met = result["seconds"] <= 15
    return Row("cold start to first request", setting, f"{result['seconds']:.1f} s (process start to exit){wrote}",
               target, _judged(plan, target, met))  # fmt: skip


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def guarded(label: str, setting: str, rows: list[Row], make) -> None:
    """Run one group of rows; an exception becomes an error row (traceback on stderr), the rest still runs."""
    started = time.perf_counter()
    try:
        made = make()
    except Exception as error:
        traceback.print_exc()
        print(f"{label}: raised after {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        rows.append(Row(label, setting, "-", "-", f"error: {type(error).__name__}: {first} (traceback on stderr)"))
        return
    print(f"{label}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    rows.extend(made if isinstance(made, list) else [made])


def skipped(reason: str) -> list[Row]:
    names = ["fast engine vs oracle", "batched vs solo (fast engine)", "bf16 vs float32 oracle", "stock, batch 1",
             "fast, batch 1", "fast vs stock audio, batch 1", "fast, one after another", "fast, at once",
             "cold start to first request"]  # fmt: skip
    return [Row(name, "-", "-", "-", f"skipped: {reason}") for name in names]


def table(rows: list[Row]) -> str:
    lines = ["| # | check | setting | result | target | status |", "|---|---|---|---|---|---|"]
    for number, row in enumerate(rows, start=1):
        cells = (row.check, row.setting, row.result, row.target, row.status)
        lines.append(f"| {number} | " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def header(plan: Plan | None, command: str) -> str:
    import platform

    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", f"command: {command}"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "diffusers")}
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if plan is not None:
        import bench

        lines.append(
            f"device: {plan.device} ({bench.describe_device(plan.device)}), python {platform.python_version()}"
        )
    if plan is not None and plan.dry_run:
        lines.append(
            "DRY RUN: every row ran on the CPU with the tiny model and tiny sizes; no figure here is a GPU figure."
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every row on the CPU, tiny model and sizes")
    parser.add_argument("--device", default="cuda", help="CUDA device to check (--dry-run always uses the CPU)")
    parser.add_argument("--frames", type=int, default=64, help="frames per benchmark request (7B shapes)")
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps per frame in the benchmark")
    parser.add_argument("--batch", type=int, default=8, help="concurrent requests in the batched benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each benchmark comparison")
    parser.add_argument("--check-frames", type=int, default=16, help="frame cap of the correctness requests")
    parser.add_argument(
        "--cold-start-dir", type=Path, help="folder for the random 7B safetensors (default: a temp dir)"
    )
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start row (it writes ~17 GB)")
    args = parser.parse_args()
    if args.dry_run and args.device != "cuda":
        parser.error("--dry-run always runs on the CPU; leave --device out")
    command = "python scripts/gpu_check.py " + " ".join(sys.argv[1:])
    absent = missing(ENGINE_NEEDS)
    old = None if "transformers" in absent else transformers_too_old()
    if absent or old:
        reason = f"missing {', '.join(absent + ([old] if old else []))}; see docs/BENCHMARKS.md (no internet)"
        print(header(None, command) + "\n\n" + table(skipped(reason)))
        return 1
    import torch

    if args.dry_run:
        plan = Plan("cpu", "tiny", "float32", 4, 10, 2, 1, 1, 6, True)
        torch.set_num_threads(1)  # a tiny model gains nothing from threads; spinning ones slow a shared machine
    elif not torch.cuda.is_available():
        print(header(None, command) + "\n\n" + table(skipped("no GPU (torch sees no CUDA device); try --dry-run")))
        return 1
    else:
        plan = Plan(args.device, "7b", "bfloat16", args.frames, args.steps, args.batch, 1, args.repeats,
                    args.check_frames, False)  # fmt: skip
    print(header(plan, command), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vv-gpu-check-") as scratch:
        import make_tiny_model

        folders = {
            "varied": make_tiny_model.build(Path(scratch) / "varied", varied_tokens=True),
            "forced": make_tiny_model.build(Path(scratch) / "forced"),
        }
        guarded("fast engine vs oracle; batched vs solo", plan.device, rows, lambda: correctness_rows(plan, folders))
        _free(plan.device)
        guarded("bf16 vs float32 oracle", plan.device, rows, lambda: bf16_row(plan, folders))
        _free(plan.device)
        print(table(rows), file=sys.stderr, flush=True)  # the checks so far, in case the benchmark dies
        guarded(f"benchmark, {plan.bench_config} shapes", plan.device, rows, lambda: bench_rows(plan))
        if args.no_cold_start:
            rows.append(Row("cold start to first request", "-", "-", "-", "skipped: --no-cold-start"))
        else:
            folder = args.cold_start_dir or Path(scratch) / f"random-{plan.bench_config}"
            guarded("cold start to first request", plan.device, rows, lambda: cold_start_row(plan, folder))
    print("\n" + table(rows))
    failed = [row for row in rows if row.status.startswith(("FAIL", "error"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
