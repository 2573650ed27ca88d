"""Deployment files: Dockerfile, .dockerignore, .runpod/hub.json and tests.json, deploy/ (no Docker needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

from vv_worker.config import load_settings
from vv_worker.schema import parse_request


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _load(REPO / "deploy" / "check_dockerfile.py")
DOCKERFILE = (REPO / "Dockerfile").read_text()

# every project script a Dockerfile RUN calls, and the test file that exercises it
SCRIPT_TESTS = {
    "scripts/docker/install.sh": "tests/test_deploy_files.py",
    "scripts/download_model.py": "tests/test_download_model.py",
    "scripts/fetch_voices.py": "tests/test_fetch_voices.py",
    "scripts/make_tiny_model.py": "tests/conftest.py",
}
IMAGE_CUDA = (12, 8)  # the base image's CUDA: hosts whose driver supports it or anything newer can run it
RUNPOD_DEFAULT_EXECUTION_TIMEOUT_S = 600
TINY_IN_IMAGE = "/app/models/tiny"
BIG_GPU_POOLS = {"AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"}


# ------------------------------------------------------------------- Dockerfile


def test_dockerfile_bakes_no_secret():
    assert checker.findings(DOCKERFILE) == []


@pytest.mark.parametrize(
    "bad",
    [
        "ARG HF_TOKEN",
        "ARG hf_token=abc",
        "ARG RUNPOD_API_KEY",
        "ENV HF_TOKEN=hf_abcdefghijklmnop",
        "ENV A=1 MY_SECRET=2",
        "ENV API_KEY value",
        "RUN HF_TOKEN=hf_abcdefghijklmnop python scripts/download_model.py",
        "RUN python scripts/download_model.py \\\n    --token $HF_TOKEN",
        "RUN --mount=type=cache,target=/root/.cache huggingface-cli download x --token abc",
        "RUN echo hf_abcdefghijklmnopqrstu > /root/token",
        "COPY .env /app/.env",
        "COPY secrets/hf_token /run/hf_token",
        "ADD id_rsa.key /root/",
    ],
)
def test_checker_flags_each_way_a_secret_gets_baked(bad):
    assert checker.findings(f'FROM python:3.11\n{bad}\nCMD ["x"]\n'), bad


@pytest.mark.parametrize(
    "good",
    [
        "RUN --mount=type=secret,id=hf_token HF_TOKEN=$(cat /run/secrets/hf_token) python x.py",
        "RUN --mount=type=secret,id=hf_token,required=false \\\n    python x.py --token-file /run/secrets/hf_token",
        "ARG BAKE_MODEL=0",
        "ENV HF_HOME=/home/worker/.cache/huggingface",
        "# ARG HF_TOKEN is never used",
    ],
)
def test_checker_accepts_safe_lines(good):
    assert checker.findings(f"FROM python:3.11\n{good}\n") == []


def test_checker_cli_exit_codes(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM x\nARG HF_TOKEN\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "check_dockerfile.py"), str(bad)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "ARG HF_TOKEN" in done.stderr
    good = subprocess.run([sys.executable, str(REPO / "deploy" / "check_dockerfile.py"), str(REPO / "Dockerfile")])
    assert good.returncode == 0


def test_dockerfile_runs_only_scripts_that_exist_and_are_tested():
    run_lines = [text for _, text in checker.instructions(DOCKERFILE) if text.startswith("RUN ")]
    called = set()
    for text in run_lines:
        called.update(re.findall(r"scripts/[\w/]+\.(?:py|sh)", text))
    assert called == set(SCRIPT_TESTS), "update SCRIPT_TESTS with the scripts the Dockerfile runs"
    for script, test_file in SCRIPT_TESTS.items():
        assert (REPO / script).is_file(), script
        assert script.rsplit("/", 1)[-1] in (REPO / test_file).read_text(), f"{test_file} does not exercise {script}"
    # every RUN that does work calls a project script, or is the user creation step
    for text in run_lines:
        assert "scripts/" in text or text.startswith("RUN useradd"), text


def test_dockerfile_cmd_user_and_secret_mount():
    instructions = [text for _, text in checker.instructions(DOCKERFILE)]
    cmd = [text for text in instructions if text.startswith("CMD ")]
    assert len(cmd) == 1 and json.loads(cmd[0][4:]) == ["python", "-m", "vv_worker"]  # VV_MODE picks the mode
    assert not any(text.startswith("ENTRYPOINT") for text in instructions)
    users = [text for text in instructions if text.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    assert instructions.index(users[-1]) < instructions.index(cmd[0])
    bake = [text for text in instructions if text.startswith("RUN ") and "download_model.py" in text]
    assert len(bake) == 1 and "--mount=type=secret,id=hf_token" in bake[0] and "BAKE_MODEL" in bake[0]
    assert "/app/models/" in bake[0]  # outside /runpod-volume, so a mounted volume cannot hide it
    base = re.search(r"ARG BASE_IMAGE=(\S+)", DOCKERFILE).group(1)
    assert "cuda12" in base.replace(".", "") or "cuda:12" in base


def test_dockerignore_lets_every_copied_path_in():
    allowed = [
        line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    for _, text in checker.instructions(DOCKERFILE):
        if text.startswith("COPY "):
            for source in [p for p in text.split()[1:-1] if not p.startswith("--")]:
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
                assert (REPO / source).exists(), source


def test_install_script_dry_run(tmp_path):
    env = dict(os.environ, VV_INSTALL_DRY_RUN="1", FLASH_ATTN_WHEEL="https://example.invalid/flash_attn.whl")
    script = str(REPO / "scripts" / "docker" / "install.sh")
    deps = subprocess.run(["bash", script, "deps"], env=env, capture_output=True, text=True, timeout=60)
    assert deps.returncode == 0, deps.stderr
    assert "pip install --no-cache-dir runpod\\>=1.12.0" in deps.stdout and "transformers\\>=5.24" in deps.stdout
    assert "--no-deps https://example.invalid/flash_attn.whl" in deps.stdout
    # flash-attn's own dependency, then the very imports transformers makes for flash_attention_2
    lines = deps.stdout.splitlines()
    wheel = next(i for i, line in enumerate(lines) if "flash_attn.whl" in line)
    assert "einops" in lines[wheel + 1]
    check = lines[wheel + 2].replace("\\", "")  # printf %q escapes
    assert "from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache;" in check
    assert "from flash_attn.bert_padding import pad_input, unpad_input;" in check
    no_wheel = subprocess.run(
        ["bash", script, "deps"], env={**env, "FLASH_ATTN_WHEEL": ""}, capture_output=True, text=True
    )
    assert "sdpa" in no_wheel.stdout and "flash_attn" not in no_wheel.stdout
    package = subprocess.run(["bash", script, "package"], env=env, capture_output=True, text=True, timeout=60)
    assert package.returncode == 0 and "pip install --no-cache-dir --no-deps ." in package.stdout
    assert subprocess.run(["bash", script], env=env, capture_output=True).returncode == 2


def test_build_script_passes_the_token_only_as_a_secret():
    env = dict(os.environ, DRY_RUN="1", HF_TOKEN="hf_" + "s" * 30, BAKE_MODEL="1")
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "build.sh"), "registry.example/vv:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "buildx build" in done.stdout and "--secret id=hf_token\\,env=HF_TOKEN" in done.stdout
    assert "--push" in done.stdout and "BAKE_MODEL=1" in done.stdout
    assert "s" * 30 not in done.stdout + done.stderr
    without = subprocess.run(
        ["bash", str(REPO / "deploy" / "build.sh"), "r/vv:1"],
        env={**env, "HF_TOKEN": ""},
        capture_output=True,
        text=True,
    )
    assert "--secret" not in without.stdout
    assert subprocess.run(["bash", str(REPO / "deploy" / "build.sh")], env=env, capture_output=True).returncode == 2


# ----------------------------------------------------------------- RunPod files


def _env_values(entries):
    return {e["key"]: str(e["input"].get("default", "")) for e in entries if "default" in e["input"]}


def test_hub_json():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    for key in ("title", "description", "type", "category", "config"):
        assert hub[key], key
    assert hub["type"] == "serverless" and hub["category"] == "audio"
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1 and config["containerDiskInGb"] >= 40
    pools = set(config["gpuIds"].split(","))
    assert pools and pools <= BIG_GPU_POOLS  # the 7B in bf16 needs ~19 GB plus activations: 48 GB and up
    for entry in config["env"]:
        assert entry["key"].startswith("VV_") and {"name", "type", "description"} <= set(entry["input"])
        for option in entry["input"].get("options", []):
            assert {"label", "value"} <= set(option)
    for preset in config["presets"]:
        assert preset["name"] and all(key.startswith("VV_") for key in preset["defaults"])
    # every default is a valid setting
    settings = {k[3:].lower(): v for k, v in _env_values(config["env"]).items()}
    settings["device"] = "cpu" if settings.get("device") == "cuda" else settings.get("device", "auto")
    load_settings(**settings)


def test_tests_json_inputs_are_valid_requests():
    from vv_worker.http.openai import parse_speech

    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    assert tests["tests"]
    voices = {v["name"] for v in json.loads((REPO / "voices" / "manifest.json").read_text())["voices"]}
    for test in tests["tests"]:
        assert test["name"] and test["timeout"] >= 60_000
        job_input = test["input"]
        if "openai_route" in job_input:
            request = parse_speech(job_input["openai_input"], TINY_IN_IMAGE)
            assert request.voice in voices
        elif job_input.get("action") == "list_voices":
            assert set(job_input) == {"action"}
        else:
            request = parse_request(job_input, max_text_chars=5000)
            assert request.text and (request.voice is None or request.voice in voices)
    config = tests["config"]
    assert config["gpuTypeId"] and config["gpuCount"] == 1
    assert all({"key", "value"} <= set(e) for e in config.get("env", []))
    # the Hub's test must not download the 7B (19 GB, no cache there): it runs the tiny model the image bakes
    env = {e["key"]: e["value"] for e in config["env"]}
    assert env["VV_MODEL"] == TINY_IN_IMAGE
    assert f"RUN python scripts/make_tiny_model.py {TINY_IN_IMAGE}" in DOCKERFILE


@pytest.mark.parametrize("path", [".runpod/hub.json", ".runpod/tests.json"])
def test_cuda_versions_let_newer_drivers_in(path):
    data = json.loads((REPO / path).read_text())
    versions = data["config"]["allowedCudaVersions"]
    parsed = [tuple(int(x) for x in v.split(".")) for v in versions]
    assert all(v >= IMAGE_CUDA for v in parsed)  # none the image cannot run on
    assert (13, 0) in parsed and IMAGE_CUDA in parsed  # CUDA 13 hosts are not shut out


def test_hub_offers_both_modes():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    modes = {preset["defaults"].get("VV_MODE") for preset in hub["config"]["presets"]}
    assert modes == {"queue", "http"}
    mode = next(e for e in hub["config"]["env"] if e["key"] == "VV_MODE")["input"]
    assert {o["value"] for o in mode["options"]} == {"queue", "http"}


@pytest.mark.parametrize(("name", "mode"), [("runpod-template.json", "queue"), ("runpod-template-http.json", "http")])
def test_template_has_no_secrets_and_valid_settings(name, mode):
    template = json.loads((REPO / "deploy" / name).read_text())
    assert template["env"]["VV_MODE"] == mode
    if mode == "http":
        port = template["env"]["PORT"]
        assert template["ports"] == [f"{port}/http"] and template["env"]["PORT_HEALTH"] == port
    for key in ("name", "imageName", "isServerless", "containerDiskInGb", "env"):
        assert key in template, key
    assert template["isServerless"] is True and template["volumeInGb"] == 0
    for key, value in template["env"].items():
        assert not re.search(r"(?i)(token|secret|passw|api_?key)", key), key
        assert not re.search(r"\b(hf|rpa)_[A-Za-z0-9]{8,}", value), key
    vv = {k[3:].lower(): v for k, v in template["env"].items() if k.startswith("VV_") and k != "VV_MODE"}
    load_settings(**{**vv, "voices_dir": "voices"})
    assert int(template["env"]["RUNPOD_INIT_TIMEOUT"]) > 420
    assert template["env"]["RUNPOD_LOG_LEVEL"] == "INFO"
    assert float(template["env"]["VV_JOB_TIMEOUT"]) < RUNPOD_DEFAULT_EXECUTION_TIMEOUT_S


def test_image_environment_keeps_audio_out_of_logs_and_jobs_inside_the_platform_timeout():
    env = dict(
        re.findall(
            r"\b([A-Z_]+)=(\S+)", " ".join(t for _, t in checker.instructions(DOCKERFILE) if t.startswith("ENV "))
        )
    )
    assert env["RUNPOD_LOG_LEVEL"] == "INFO" and env["VV_MODE"] == "queue" and env["VV_HOST"] == "0.0.0.0"
    assert "VV_PORT" not in env  # RunPod's PORT must win on load-balancing endpoints
    # the worker's own time limit ends a job with a clean error before RunPod's default execution timeout kills it
    assert float(env["VV_JOB_TIMEOUT"]) <= RUNPOD_DEFAULT_EXECUTION_TIMEOUT_S - 30
    hub_env = {e["key"]: e["input"] for e in json.loads((REPO / ".runpod" / "hub.json").read_text())["config"]["env"]}
    assert float(hub_env["VV_JOB_TIMEOUT"]["default"]) == float(env["VV_JOB_TIMEOUT"])


def _floor(pyproject: str, name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(rf'"{name}>=([\d.]+)', pyproject).group(1).split("."))


def test_dependency_floors_and_deploy_doc():
    import tomllib

    pyproject = (REPO / "pyproject.toml").read_text()
    assert _floor(pyproject, "runpod") >= (1, 12, 0)  # rp_ssrf.safe_get, which reference_audio_url needs
    from runpod.serverless.utils import rp_ssrf

    assert callable(rp_ssrf.safe_get)
    assert _floor(pyproject, "torch") >= (2, 6)  # transformers 5.24 needs torch >= 2.6 and python >= 3.11
    assert tomllib.loads(pyproject)["project"]["requires-python"] == ">=3.11"
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    for needle in (
        "RUNPOD_INIT_TIMEOUT",
        "runpod >= 1.12.0",
        "BAKE_MODEL",
        "--secret id=hf_token",
        "/runpod-volume",
        "VV_MODE=http",
        "Execution Timeout",
        "VV_JOB_TIMEOUT",
        "RUNPOD_LOG_LEVEL",
        "einops",
    ):
        assert needle in doc, needle


def test_image_command_starts_either_mode(subprocess_env, tmp_path):
    from api_server import free_port

    wrong = subprocess.run(
        [sys.executable, "-m", "vv_worker"], env={**subprocess_env, "VV_MODE": "both"}, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "VV_MODE: Input should be 'queue' or 'http' (got 'both')" in wrong.stderr
    queue = subprocess.run(
        [sys.executable, "-m", "vv_worker", "--test_input", json.dumps({"input": {"text": "Hi.", "seed": 1}})],
        env={**subprocess_env, "VV_MODE": "queue"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert queue.returncode == 0 and "Job result" in queue.stdout + queue.stderr, queue.stderr[-2000:]
    port = free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "vv_worker"], env={**subprocess_env, "VV_MODE": "http", "PORT": str(port)}
    )
    try:
        import time
        import urllib.request

        deadline, status = time.monotonic() + 180, None
        while status != 200 and time.monotonic() < deadline and http.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    status = response.status
            except OSError:
                time.sleep(0.3)
        assert status == 200  # RunPod's PORT, as a load-balancing endpoint sets it
    finally:
        http.terminate()
        http.wait(timeout=30)
