"""scripts/bench.py and scripts/gpu_check.py run end to end on the CPU (tiny sizes), so neither can rot.

They are benchmarks: these tests check what they report and that their correctness figures hold,
never how fast anything ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ATOL = 2e-5  # the engine tests' tolerance: batched vs solo and fast vs stock in float32


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VV_", "RUNPOD_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bench_batch_json():
    done = run_script(
        "scripts/bench.py", "--config", "tiny", "--batch", "2", "--frames", "4", "--repeats", "1", "--json",
        "--threads", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is one JSON object; the readable report went to stderr
    assert "aggregate speed-up" in done.stderr
    assert result["batch"] == 2 and result["frames"] == 4 and result["repeats"] == 1
    assert 0 <= result["max_abs_diff_vs_solo"] <= ATOL
    batch = result["solo_vs_batched"]
    assert result["frames_per_s_batched"] == batch["batched"]["frames_per_s"] > 0
    assert result["frames_per_s_solo"] == batch["solo"]["frames_per_s"] > 0
    assert result["aggregate_speedup"] == pytest.approx(result["frames_per_s_batched"] / result["frames_per_s_solo"])
    for name in ("solo", "batched"):
        row = batch[name]
        assert len(row["all_wall_s"]) == 1
        assert row["frames_per_s"] == pytest.approx(2 * 4 / row["wall_s"])
        assert 0 < row["first_audio_s_median"] <= row["first_audio_s_max"] <= row["wall_s"]
        assert 0 < row["rtf_per_request_median"] <= row["rtf_per_request_max"]
        assert row["peak_memory_gib"] > 0
    engines = result["stock_vs_fast"]  # forced frames on the tiny model: stock and the fast engine agree
    assert engines["max_abs_diff"] <= ATOL and engines["relative_l2"] <= 1e-4
    for name in ("stock", "fast"):
        assert engines[name]["ms_per_frame"] > 0 and engines[name]["peak_memory_gib"] > 0
    assert engines["fast"]["first_audio_s"] < engines["fast"]["seconds"]  # it streams; stock returns at the end
    assert engines["stock"]["first_audio_s"] == engines["stock"]["seconds"]


def test_bench_refuses_bad_options():
    for args in (["--no-graphs"], ["--batch", "0"], ["--frames", "0"]):
        done = run_script("scripts/bench.py", *args, timeout=120)
        assert done.returncode == 2, args
        assert "usage:" in done.stderr


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


def test_gpu_check_dry_run():
    done = run_script("scripts/gpu_check.py", "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DRY RUN" in done.stdout
    rows = table_rows(done.stdout)
    checks = [row[1] for row in rows]
    assert checks == [
        "fast engine vs oracle",
        "batched vs solo (fast engine)",
        "bf16 vs float32 oracle",
        "stock, batch 1",
        "fast, batch 1",
        "fast vs stock audio, batch 1",
        "fast, 2 one after another",
        "fast, 2 at once",
        "cold start to first request",
    ]
    status = {row[1]: row[5] for row in rows}
    for name in checks[:3]:
        assert status[name] == "PASS", rows
    for name in checks[3:]:
        assert status[name] == "measured (dry run: CPU, tiny; not a GPU figure)", rows
    result = {row[1]: row[3] for row in rows}
    assert re.search(r"same tokens 4/4, max abs diff ", result["fast engine vs oracle"])
    assert re.search(r"^\d+\.\d s \(process start to exit\)", result["cold start to first request"])
    assert re.search(r"\d+\.\d+x solo, max abs diff vs solo ", result["fast, 2 at once"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the real check would run")
def test_gpu_check_without_gpu_skips_every_row():
    done = run_script("scripts/gpu_check.py", timeout=120)
    assert done.returncode == 1
    rows = table_rows(done.stdout)
    assert len(rows) == 9
    assert all(row[5].startswith("skipped: no GPU") for row in rows), rows
