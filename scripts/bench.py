#!/usr/bin/env python
"""Time the fast engine: against transformers' stock ``generate``, and N concurrent requests against the same N
run one after another, in one process.

    python scripts/bench.py --config tiny|medium|7b [--device cpu|cuda] [--dtype ...] [--frames F] [--steps S]
                            [--cfg C] [--batch N] [--repeats R] [--warmup W] [--voice-seconds V] [--json]
    python scripts/bench.py --config 7b --device cuda --cold-start /path/to/folder

Random weights, created directly on the device in the chosen dtype (no download). Every request
makes exactly ``--frames`` frames: every token but the audio token is forbidden (a logits
processor for stock, ``force_frames`` for the fast engine).

1. stock vs fast, batch 1: the first request through both engines, alternating (stock, fast,
   stock, fast ...), same inputs and seed.
2. solo vs batched: N requests (different texts, seeds and, with ``--voice-seconds``, voices) run
   one after another, then the same N from N threads at once (continuous batching), alternating.

Warm-up rounds first, the device synchronised before each clock read, medians over the repeats.
Stock ``generate`` returns audio only when it finishes, so its time to first audio is its whole
run; the fast engine's is the time from the call to its first streamed chunk, as the caller sees it.
Peak memory is per phase: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS
(VmHWM, reset through /proc/self/clear_refs) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

SAMPLE_RATE, SAMPLES_PER_FRAME = 24000, 3200
TEXTS = [
    # 20 words: the first request, the one the batch-1 figures (time to first audio among them) are for
    "Hello, and welcome to the show. Today we talk about speech, voices, the weather and what comes next after that.",
    "The quick brown fox jumps over the lazy dog.",
    "One, two, three, four, five. Numbers, names and places are read aloud as written.",
    "How are you doing this morning? Fine, thanks, and you?",
]


def speechlike(seconds: float, pitch: float = 140.0, rate: int = SAMPLE_RATE):
    """A voiced, amplitude-modulated tone standing in for a voice prompt (only its length matters)."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 5))
    return (0.2 * tone * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def text_config(name: str, vocab: int) -> dict:
    base = {"model_type": "qwen2", "max_position_embeddings": 32768, "tie_word_embeddings": False}
    if name == "medium":  # about 1/7 of the 7B's width, 4 layers; vocab scaled to keep lm_head/LLM near 7B's
        return {**base, "hidden_size": 1024, "intermediate_size": 5504, "num_hidden_layers": 4,
                "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 16384}  # fmt: skip
    if name == "7b":  # Qwen2.5-7B, as in vibevoice/VibeVoice-7B-hf
        return {**base, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}  # fmt: skip
    raise ValueError(name)


def build_config(name: str, tokenizer):
    import make_tiny_model

    if name == "tiny":
        return make_tiny_model.build_config(tokenizer)
    from transformers import VibeVoiceConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in make_tiny_model.SPECIAL_TOKENS}
    text = text_config(name, make_tiny_model.VOCAB_SIZE)
    if name == "medium":
        audio = {"model_type": "vibevoice_acoustic_tokenizer", "num_filters": 16}
        semantic = {"model_type": "vibevoice_acoustic_tokenizer_encoder", "num_filters": 16, "hidden_size": 128}
    else:  # VibeVoiceAcousticTokenizerConfig defaults; semantic encoder with hidden 128
        audio = {"model_type": "vibevoice_acoustic_tokenizer"}
        semantic = {"model_type": "vibevoice_acoustic_tokenizer_encoder", "hidden_size": 128}
    return VibeVoiceConfig(
        text_config=text,
        audio_config=audio,
        semantic_model_config=semantic,
        diffusion_head_config={"num_hidden_layers": 4, "intermediate_size": 3 * text["hidden_size"]},
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        audio_bos_token_id=ids["<|vision_start|>"],
        audio_eos_token_id=ids["<|vision_end|>"],
        audio_token_id=ids["<|vision_pad|>"],
    )


def build_model(name: str, device: str, dtype_name: str):
    """Random-weight model on ``device`` in ``dtype`` plus a processor (tiny tokenizer: shapes only)."""
    import make_tiny_model
    import torch
    from transformers import VibeVoiceForConditionalGeneration

    tokenizer = make_tiny_model.build_tokenizer()
    config = build_config(name, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = VibeVoiceForConditionalGeneration._from_config(
            config, dtype=getattr(torch, dtype_name), attn_implementation={"text_config": "sdpa"}
        )
    model.eval()
    processor = make_tiny_model.finish_checkpoint(model, tokenizer)
    return model, processor


def build_engine(name: str, device: str, dtype_name: str, max_batch: int):
    """A :class:`FastEngine` over a random ``name`` model; its ``loaded`` serves stock ``generate`` too."""
    from vv_worker.config import Runtime
    from vv_worker.engine.fast import FastEngine
    from vv_worker.engine.loaded import LoadedModel

    model, processor = build_model(name, device, dtype_name)
    loaded = LoadedModel(model, processor, Runtime(device, dtype_name, "sdpa"), f"random-{name}")
    return FastEngine(loaded, max_batch=max_batch)


def make_jobs(count: int, frames: int, steps: int, cfg: float, seed: int, voice_seconds: float) -> list:
    """``count`` requests with different texts, seeds and (when ``voice_seconds``) voices."""
    from vv_worker.engine.base import GenerationJob
    from vv_worker.prompt import ScriptLine

    return [
        GenerationJob(
            script=[ScriptLine(0, TEXTS[i % len(TEXTS)])],
            voices={0: speechlike(voice_seconds, pitch=140.0 + 15 * i)} if voice_seconds else {},
            seed=seed + i,
            cfg_scale=cfg,
            diffusion_steps=steps,
            max_frames=frames,
        )
        for i in range(count)
    ]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of one phase: allocated GPU memory on CUDA, the process's peak RSS on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "peak RSS of the process so far (ru_maxrss; VmHWM could not be reset)"

    def peak_gib(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        if self.kind.startswith("peak RSS (VmHWM)"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class Run:
    """One request's timing as its caller saw it: from the call to the last chunk and to the first."""

    seconds: float
    first_audio_seconds: float
    audio: object  # np.ndarray, float32


def stock_inputs(loaded, job) -> dict:
    """Exactly what stock usage passes to generate: the processor's batch, voices as raw waveforms."""
    from vv_worker.prompt import build_conversation

    batch = loaded.processor.apply_chat_template(
        build_conversation(job.script, job.voices), tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = {key: value.to(loaded.model.device) for key, value in batch.items()}
    if "input_values" in inputs:
        inputs["input_values"] = inputs["input_values"].to(loaded.model.dtype)
    return inputs


def run_stock(loaded, job, inputs, device: str) -> Run:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class OnlyAudio(LogitsProcessor):
        def __call__(self, input_ids, scores):
            keep = scores[:, loaded.audio_token_id].clone()
            scores = torch.full_like(scores, float("-inf"))
            scores[:, loaded.audio_token_id] = keep
            return scores

    torch.manual_seed(job.seed)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            **inputs,
            max_new_tokens=job.max_frames,
            guidance_scale=job.cfg_scale,
            num_diffusion_steps=job.diffusion_steps,
            logits_processor=LogitsProcessorList([OnlyAudio()]),
            return_dict_in_generate=True,
        )
    sync(device)
    seconds = time.perf_counter() - started
    return Run(seconds, seconds, out.audio[0].float().reshape(-1).cpu().numpy())


def run_fast(engine, job, device: str, start: float | None = None) -> Run:
    """One request through ``engine.stream``; ``start`` (default: now) is when its caller asked for it."""
    import numpy as np

    sync(device)
    started = time.perf_counter() if start is None else start
    first = None
    chunks = []
    for chunk in engine.stream(job, force_frames=True):
        if first is None:
            first = time.perf_counter() - started
        chunks.append(chunk)
    sync(device)
    return Run(time.perf_counter() - started, first, np.concatenate(chunks))


def run_solo(engine, jobs, device: str) -> tuple[float, list[Run]]:
    """The requests one after another: (wall seconds, each request's run)."""
    started = time.perf_counter()
    runs = [run_fast(engine, job, device) for job in jobs]
    return time.perf_counter() - started, runs


def run_batched(engine, jobs, device: str) -> tuple[float, list[Run]]:
    """The requests from one thread each, released together: (wall seconds, each request's run)."""
    runs: list[Run | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(jobs) + 1)

    def request(index: int) -> None:
        gate.wait()
        try:
            runs[index] = run_fast(engine, jobs[index], device, start=time.perf_counter())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=request, args=(i,), name=f"bench-request-{i}") for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    sync(device)
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, runs


def check_length(label: str, run: Run, frames: int) -> None:
    if run.audio.shape[0] != frames * SAMPLES_PER_FRAME:
        raise SystemExit(f"{label} made {run.audio.shape[0]} samples, expected {frames} frames")


def alternate(variants: dict, warmup: int, repeats: int, memory: PeakMemory) -> tuple[dict, dict]:
    """Run each variant once per round, in order, ``warmup + repeats`` rounds; keep the timed rounds' results.

    Returns ({name: [result of each timed round]}, {name: peak GiB over its timed rounds}).
    """
    results = {name: [] for name in variants}
    peaks = dict.fromkeys(variants, 0.0)
    for round_index in range(warmup + repeats):
        for name, variant in variants.items():
            memory.reset()
            result = variant()
            if round_index >= warmup:
                results[name].append(result)
                peaks[name] = max(peaks[name], memory.peak_gib())
    return results, peaks


def audio_seconds(frames: int) -> float:
    return frames * SAMPLES_PER_FRAME / SAMPLE_RATE


def compare_engines(engine, job, device: str, warmup: int, repeats: int) -> dict:
    """Stock ``generate`` against the fast engine on one request at batch 1, alternating."""
    import numpy as np

    loaded, memory = engine.loaded, PeakMemory(device)
    inputs = stock_inputs(loaded, job)
    variants = {"stock": lambda: run_stock(loaded, job, inputs, device), "fast": lambda: run_fast(engine, job, device)}
    results, peaks = alternate(variants, warmup, repeats, memory)
    out: dict = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "memory_kind": memory.kind}
    for name, runs in results.items():
        for run in runs:
            check_length(name, run, job.max_frames)
        total = statistics.median(run.seconds for run in runs)
        out[name] = {
            "ms_per_frame": total * 1000 / job.max_frames,
            "rtf": total / audio_seconds(job.max_frames),
            "seconds": total,
            "first_audio_s": statistics.median(run.first_audio_seconds for run in runs),
            "all_seconds": [run.seconds for run in runs],
            "peak_memory_gib": peaks[name],
        }
    stock, fast = results["stock"][-1].audio, results["fast"][-1].audio
    out["speedup"] = out["stock"]["seconds"] / out["fast"]["seconds"]
    out["max_abs_diff"] = float(np.abs(fast - stock).max())
    out["relative_l2"] = float(np.linalg.norm(fast - stock) / max(np.linalg.norm(stock), 1e-12))
    return out


def compare_batch(engine, jobs, device: str, warmup: int, repeats: int) -> dict:
    """The same requests one after another (solo) and from one thread each (batched), alternating."""
    import numpy as np

    memory = PeakMemory(device)
    variants = {"solo": lambda: run_solo(engine, jobs, device), "batched": lambda: run_batched(engine, jobs, device)}
    results, peaks = alternate(variants, warmup, repeats, memory)
    frames = sum(job.max_frames for job in jobs)
    out: dict = {"batch": len(jobs), "frames_per_request": jobs[0].max_frames, "memory_kind": memory.kind}
    for name, rounds in results.items():
        rtfs, firsts = [], []  # per round: each request's RTF (its call to last chunk over its audio) and first audio
        for _, runs in rounds:
            for job, run in zip(jobs, runs, strict=True):
                check_length(name, run, job.max_frames)
            rtfs.append([run.seconds / audio_seconds(job.max_frames) for job, run in zip(jobs, runs, strict=True)])
            firsts.append([run.first_audio_seconds for run in runs])
        walls = [wall for wall, _ in rounds]
        out[name] = {
            "frames_per_s": statistics.median(frames / wall for wall in walls),
            "wall_s": statistics.median(walls),
            "all_wall_s": walls,
            "aggregate_rtf": statistics.median(walls) / audio_seconds(frames),
            "rtf_per_request_median": statistics.median(statistics.median(values) for values in rtfs),
            "rtf_per_request_max": statistics.median(max(values) for values in rtfs),
            "first_audio_s_median": statistics.median(statistics.median(values) for values in firsts),
            "first_audio_s_max": statistics.median(max(values) for values in firsts),
            "peak_memory_gib": peaks[name],
        }
    solo_audio = [run.audio for run in results["solo"][-1][1]]
    out["max_abs_diff_vs_solo"] = max(
        float(np.abs(run.audio - solo).max())
        for _, runs in results["batched"]
        for run, solo in zip(runs, solo_audio, strict=True)
    )
    out["aggregate_speedup"] = out["batched"]["frames_per_s"] / out["solo"]["frames_per_s"]
    # solo wall / batched wall of each round: the two ran back to back, so a noisy machine hits both alike
    out["round_speedups"] = [s / b for (s, _), (b, _) in zip(results["solo"], results["batched"], strict=True)]
    return out


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}"


def bench(args) -> dict:
    """Both comparisons on one freshly built engine; everything in one dict (what ``--json`` prints)."""
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = build_engine(args.config, args.device, args.dtype, max(args.batch, 1))
    model = engine.loaded.model
    jobs = make_jobs(args.batch, args.frames, args.steps, args.cfg, args.seed, args.voice_seconds)
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python " + " ".join(sys.argv),
        "config": args.config,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": time.perf_counter() - started,
        "device": args.device,
        "device_name": describe_device(args.device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "frames": args.frames,
        "steps": args.steps,
        "cfg": args.cfg,
        "voice_seconds": args.voice_seconds,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "batch": args.batch,
    }
    result["stock_vs_fast"] = compare_engines(engine, jobs[0], args.device, args.warmup, args.repeats)
    batch = compare_batch(engine, jobs, args.device, args.warmup, args.repeats)
    result["solo_vs_batched"] = batch
    for key in ("aggregate_speedup", "max_abs_diff_vs_solo"):
        result[key] = batch[key]
    result["frames_per_s_batched"] = batch["batched"]["frames_per_s"]
    result["frames_per_s_solo"] = batch["solo"]["frames_per_s"]
    return result


def print_report(result: dict, out=sys.stdout) -> None:
    """The human-readable form of :func:`bench`'s dict."""

    def say(line: str = "") -> None:
        print(line, file=out)

    say(f"date: {result['date']}")
    say(f"command: {result['command']}")
    say(f"model: random {result['config']}, {result['parameters_m']:.1f} M parameters, "
        f"built in {result['build_s']:.1f} s")  # fmt: skip
    say(f"device: {result['device']} ({result['device_name']}), dtype {result['dtype']}, torch {result['torch']}, "
        f"transformers {result['transformers']}, torch threads {result['torch_threads']}")  # fmt: skip
    engines = result["stock_vs_fast"]
    say(f"jobs: prompt {engines['prompt_tokens']} tokens (first request), voice {result['voice_seconds']} s, "
        f"{result['frames']} frames, {result['steps']} diffusion steps, cfg {result['cfg']}, warm-up rounds "
        f"{result['warmup']}, timed rounds {result['repeats']} (variants alternating); "
        f"memory: {engines['memory_kind']}")  # fmt: skip
    say("\n1. stock generate vs fast engine, batch 1")
    for name in ("stock", "fast"):
        row = engines[name]
        say(f"  {name:5s}: {row['ms_per_frame']:9.1f} ms/frame  RTF {row['rtf']:7.3f}  total {row['seconds']:8.3f} s  "
            f"first audio {row['first_audio_s']:8.3f} s  peak {row['peak_memory_gib']:.2f} GiB  "
            f"(all totals: {', '.join(f'{s:.3f}' for s in row['all_seconds'])})")  # fmt: skip
    say(f"  speed-up (stock / fast, medians): {engines['speedup']:.2f}x; fast vs stock audio, same seed: "
        f"max abs diff {engines['max_abs_diff']:.3g}, relative L2 error {engines['relative_l2']:.3g}")  # fmt: skip
    batch = result["solo_vs_batched"]
    say(f"\n2. {batch['batch']} requests one after another (solo) vs from {batch['batch']} threads at once (batched)")
    for name in ("solo", "batched"):
        row = batch[name]
        say(f"  {name:7s}: {row['frames_per_s']:8.2f} frames/s  wall {row['wall_s']:8.3f} s  aggregate RTF "
            f"{row['aggregate_rtf']:7.3f}  per-request RTF median {row['rtf_per_request_median']:7.3f} max "
            f"{row['rtf_per_request_max']:7.3f}  first audio median {row['first_audio_s_median']:7.3f} s max "
            f"{row['first_audio_s_max']:7.3f} s  peak {row['peak_memory_gib']:.2f} GiB  "
            f"(all walls: {', '.join(f'{s:.3f}' for s in row['all_wall_s'])})")  # fmt: skip
    say(f"  aggregate speed-up (batched / solo frames per second, medians): {batch['aggregate_speedup']:.2f}x; "
        f"per round: {', '.join(f'{r:.2f}' for r in batch['round_speedups'])}; "
        f"batched vs solo audio: max abs diff {batch['max_abs_diff_vs_solo']:.3g}")  # fmt: skip


def write_random_checkpoint(config: str, device: str, dtype: str, folder: Path) -> float:
    """Random ``config`` weights as safetensors in ``folder``; seconds it took."""
    import torch

    started = time.perf_counter()
    model, processor = build_model(config, device, dtype)
    with torch.no_grad():  # as make_tiny_model: the allowed tokens tie, argmax picks audio, length = frame cap
        cfg = model.config
        allowed = [cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.eos_token_id]
        model.lm_head.weight[allowed] = 0.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return time.perf_counter() - started


def cold_start(config: str, device: str, dtype: str, folder: Path) -> dict:
    """Time a fresh handler process (``--test_input``, fast engine) from start to exit, weights on local disk.

    Writes random ``config`` weights to ``folder`` first unless it already holds a checkpoint.
    """
    result: dict = {"folder": str(folder), "write_s": None}
    if not (folder / "config.json").is_file():
        result["write_s"] = write_random_checkpoint(config, device, dtype, folder)
    request = json.dumps({"input": {"text": "Hello there, this is a cold start.", "seed": 1}})
    with tempfile.TemporaryDirectory() as voices:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VV_")}
        path = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))  # keep carried wheels
        env.update(VV_MODEL=str(folder), VV_DEVICE=device, VV_DTYPE=dtype, VV_VOICES_DIR=voices,
                   VV_ENGINE="fast", HF_HUB_OFFLINE="1", PYTHONPATH=path)  # fmt: skip
        command = [sys.executable, "-m", "vv_worker.handler", "--test_input", request]
        result["command"] = f"VV_MODEL={folder} VV_ENGINE=fast python -m vv_worker.handler --test_input '{request}'"
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        result["seconds"] = time.perf_counter() - started
    result["exit_code"] = done.returncode
    result["output_tail"] = [line[:200] for line in (done.stdout + done.stderr).strip().splitlines()[-5:]]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["tiny", "medium", "7b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--frames", type=int, default=20, help="frames each request makes (forced)")
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps per frame")
    parser.add_argument("--cfg", type=float, default=1.3, help="guidance scale")
    parser.add_argument("--batch", type=int, default=1, help="concurrent requests in the solo vs batched comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each comparison")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first request (request i: seed + i)")
    parser.add_argument("--voice-seconds", type=float, default=0.0, help="length of each request's synthetic voice")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the report goes to stderr)")
    parser.add_argument("--cold-start", metavar="FOLDER", help="time a fresh handler process instead")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    for name in ("frames", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.cold_start:
        result = cold_start(args.config, args.device, args.dtype, Path(args.cold_start))
        if args.json:
            print(json.dumps(result))
            return
        if result["write_s"] is not None:
            print(f"wrote random {args.config} weights to {args.cold_start} in {result['write_s']:.1f} s")
        print(f"command: {result['command']}")
        print(f"cold start to first request served (process start to exit): {result['seconds']:.1f} s, "
              f"exit code {result['exit_code']}")  # fmt: skip
        print("handler output (last lines):\n  " + "\n  ".join(result["output_tail"]))
        return
    result = bench(args)
    if args.json:
        print_report(result, out=sys.stderr)
        print(json.dumps(result))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
