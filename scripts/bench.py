#!/usr/bin/env python
"""Time transformers' stock VibeVoice ``generate`` against the fast engine, in one process.

    python scripts/bench.py --config tiny|medium|7b [--device cpu|cuda] [--dtype ...] [--frames N]
                            [--steps S] [--cfg C] [--repeats R] [--voice-seconds V] [--batch 1]
    python scripts/bench.py --config 7b --device cuda --cold-start /path/to/folder

Random weights, created directly on the device in the chosen dtype (no download). Both engines
get the same inputs and seed, and exactly ``--frames`` frames: every token but the audio token is
forbidden (a logits processor for stock, ``force_frames`` for the fast engine). Warm-up first,
the device synchronised before each clock read, medians over the repeats.

Stock ``generate`` returns audio only when it finishes, so its time to first audio is its whole
run; the fast engine's is the time to its first streamed chunk.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

SAMPLE_RATE, SAMPLES_PER_FRAME = 24000, 3200
TEXT = "Hello, and welcome to the show. Today we talk about speech, voices and the weather."


def speechlike(seconds: float, rate: int = SAMPLE_RATE):
    """A voiced, amplitude-modulated tone standing in for a voice prompt (only its length matters)."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
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
    from transformers import (
        VibeVoiceForConditionalGeneration,
    )

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


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return f"peak RSS of the process so far {peak:.2f} GiB"


def reset_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def stock_inputs(engine, job) -> dict:
    """Exactly what stock usage passes to generate: the processor's batch, voices as raw waveforms."""
    from vv_worker.prompt import build_conversation

    batch = engine.loaded.processor.apply_chat_template(
        build_conversation(job.script, job.voices), tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = {key: value.to(engine.loaded.model.device) for key, value in batch.items()}
    if "input_values" in inputs:
        inputs["input_values"] = inputs["input_values"].to(engine.loaded.model.dtype)
    return inputs


def time_stock(engine, job, inputs, device: str):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class OnlyAudio(LogitsProcessor):
        def __call__(self, input_ids, scores):
            keep = scores[:, engine.loaded.audio_token_id].clone()
            scores = torch.full_like(scores, float("-inf"))
            scores[:, engine.loaded.audio_token_id] = keep
            return scores

    torch.manual_seed(job.seed)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.loaded.model.generate(
            **inputs,
            max_new_tokens=job.max_frames,
            guidance_scale=job.cfg_scale,
            num_diffusion_steps=job.diffusion_steps,
            logits_processor=LogitsProcessorList([OnlyAudio()]),
            return_dict_in_generate=True,
        )
    sync(device)
    seconds = time.perf_counter() - started
    audio = out.audio[0].float().reshape(-1).cpu().numpy()
    return seconds, seconds, audio


def time_fast(engine, job, device: str):
    import numpy as np

    sync(device)
    started = time.perf_counter()
    first = None
    chunks = []
    for chunk in engine.stream(job, force_frames=True):
        if first is None:
            first = time.perf_counter() - started
        chunks.append(chunk)
    sync(device)
    return time.perf_counter() - started, first, np.concatenate(chunks)


def report(label: str, runs: list[tuple[float, float]], frames: int) -> float:
    total = statistics.median(r[0] for r in runs)
    first = statistics.median(r[1] for r in runs)
    audio_seconds = frames * SAMPLES_PER_FRAME / SAMPLE_RATE
    print(
        f"{label:5s}: {total * 1000 / frames:9.1f} ms/frame  RTF {total / audio_seconds:7.3f}  "
        f"total {total:8.3f} s  time to first audio {first:8.3f} s  "
        f"(median of {len(runs)}; all totals: {', '.join(f'{r[0]:.3f}' for r in runs)})"
    )
    return total


def bench(args) -> None:
    import numpy as np
    import torch

    from vv_worker.config import Runtime
    from vv_worker.engine.base import GenerationJob
    from vv_worker.engine.fast import FastEngine
    from vv_worker.engine.loaded import LoadedModel
    from vv_worker.prompt import ScriptLine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_graphs:
        os.environ["VV_FAST_CUDA_GRAPHS"] = "0"
    started = time.perf_counter()
    model, processor = build_model(args.config, args.device, args.dtype)
    engine = FastEngine(
        LoadedModel(model, processor, Runtime(args.device, args.dtype, "sdpa"), f"random-{args.config}")
    )
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: random {args.config}, {params:.1f} M parameters, built in {time.perf_counter() - started:.1f} s")
    print(f"device: {args.device} ({describe_device(args.device)}), dtype {args.dtype}, torch threads "
          f"{torch.get_num_threads()}, CUDA graphs off (not implemented)")  # fmt: skip
    voices = {0: speechlike(args.voice_seconds)} if args.voice_seconds else {}
    job = GenerationJob(
        script=[ScriptLine(0, TEXT)],
        voices=voices,
        seed=args.seed,
        cfg_scale=args.cfg,
        diffusion_steps=args.steps,
        max_frames=args.frames,
    )
    inputs = stock_inputs(engine, job)
    print(
        f"job: prompt {inputs['input_ids'].shape[1]} tokens, voice {args.voice_seconds} s, {args.frames} frames, "
        f"{args.steps} diffusion steps, cfg {args.cfg}, batch 1, warm-up {args.warmup}, repeats {args.repeats}"
    )
    results = {}
    for label in ("stock", "fast"):
        reset_memory(args.device)
        runs = []
        for index in range(args.warmup + args.repeats):
            if label == "stock":
                total, first, audio = time_stock(engine, job, inputs, args.device)
            else:
                total, first, audio = time_fast(engine, job, args.device)
            if audio.shape[0] != args.frames * SAMPLES_PER_FRAME:
                raise SystemExit(f"{label} made {audio.shape[0]} samples, expected {args.frames} frames")
            if index >= args.warmup:
                runs.append((total, first))
        results[label] = (report(label, runs, args.frames), audio)
        print(f"       {memory(args.device)}")
    stock_total, stock_audio = results["stock"]
    fast_total, fast_audio = results["fast"]
    error = np.abs(fast_audio - stock_audio).max()
    relative = np.linalg.norm(fast_audio - stock_audio) / max(np.linalg.norm(stock_audio), 1e-12)
    print(f"speed-up (stock / fast, median totals): {stock_total / fast_total:.2f}x")
    print(f"fast vs stock audio, same seed: max abs diff {error:.3g}, relative L2 error {relative:.3g}")


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}"


def cold_start(args) -> None:
    """Write random weights as safetensors, then time a fresh handler process to its first served request."""
    import torch

    folder = Path(args.cold_start)
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        model, processor = build_model(args.config, args.device, args.dtype)
        with torch.no_grad():  # as make_tiny_model: the allowed tokens tie, argmax picks audio, length = frame cap
            config = model.config
            allowed = [config.audio_token_id, config.audio_bos_token_id, config.audio_eos_token_id, config.eos_token_id]
            model.lm_head.weight[allowed] = 0.0
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"wrote random {args.config} weights to {folder} in {time.perf_counter() - started:.1f} s")
    request = json.dumps({"input": {"text": "Hello there, this is a cold start.", "seed": 1}})
    with tempfile.TemporaryDirectory() as voices:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VV_")}
        env.update(VV_MODEL=str(folder), VV_DEVICE=args.device, VV_DTYPE=args.dtype, VV_VOICES_DIR=voices,
                   VV_ENGINE="fast", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))  # fmt: skip
        command = [sys.executable, "-m", "vv_worker.handler", "--test_input", request]
        print("command: VV_MODEL=" + str(folder), " ".join(command[:4]), repr(request))
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - started
    print(f"cold start to first request served (process start to exit): {seconds:.1f} s, exit code {done.returncode}")
    tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
    print("handler output (last lines):\n  " + "\n  ".join(line[:200] for line in tail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["tiny", "medium", "7b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--frames", type=int, default=20, help="frames generated by each engine (forced)")
    parser.add_argument("--steps", type=int, default=10, help="diffusion steps per frame")
    parser.add_argument("--cfg", type=float, default=1.3, help="guidance scale")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--voice-seconds", type=float, default=0.0, help="length of a synthetic voice prompt")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--no-graphs", action="store_true", help="fast engine without CUDA graphs")
    parser.add_argument("--cold-start", metavar="FOLDER", help="time a fresh handler process instead")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.batch != 1:
        raise SystemExit("--batch > 1: not supported yet (the fast engine runs one request at a time)")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print("command: python " + " ".join(sys.argv))
    if args.cold_start:
        cold_start(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
