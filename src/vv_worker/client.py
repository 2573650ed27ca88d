"""A small client for a deployed vv-worker: RunPod's serverless HTTP API, or the SDK's local API server.

Cloud (``https://api.runpod.ai/v2/{endpoint}``, ``Authorization: Bearer $RUNPOD_API_KEY``):
POST /runsync, POST /run, GET /status/{id}, GET /stream/{id}, POST /cancel/{id}.
Local (``python -m vv_worker.handler --rp_serve_api``): POST /runsync, POST /run, POST /status/{id},
POST /stream/{id}, no endpoint id, no key. The local server runs a job queued with /run when
/status (or /stream) is first called for it.

    python -m vv_worker.client --endpoint ENDPOINT_ID --text "Hello there." --out hello.wav
    python -m vv_worker.client --local http://127.0.0.1:8000 --text "Hello." --out hello.wav --mode run

The API key is read from ``RUNPOD_API_KEY`` and never printed or logged.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
MODES = ("runsync", "run", "stream")


class ClientError(RuntimeError):
    """The API could not be reached or answered something unusable."""


class JobFailed(ClientError):
    """The job ended in a state other than COMPLETED; ``job`` holds the last status response."""

    def __init__(self, message: str, job: dict):
        super().__init__(message)
        self.job = job


def job_error(job: dict) -> str:
    """The error message of a failed job, wherever the API put it."""
    output = job.get("output")
    if isinstance(output, dict) and output.get("error"):
        return str(output["error"])
    if job.get("error"):
        return str(job["error"])
    return f"the job ended with status {job.get('status')}"


class RunPodClient:
    """Submit synthesis jobs to one endpoint (cloud) or to a local API server (``local_url``)."""

    def __init__(
        self,
        endpoint_id: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        local_url: str | None = None,
        timeout_s: float = 30.0,
        poll_interval_s: float = 1.0,
        session: requests.Session | None = None,
    ):
        self.local = local_url is not None
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._session = session or requests.Session()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.local:
            self.base = local_url.rstrip("/")
        else:
            if not endpoint_id:
                raise ClientError("an endpoint id is needed (or a local server URL)")
            if not api_key:
                raise ClientError("no API key: set RUNPOD_API_KEY")
            base = base_url or os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or DEFAULT_BASE_URL
            self.base = f"{base.rstrip('/')}/{endpoint_id}"
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never shows the key
        return f"RunPodClient(base={self.base!r}, local={self.local})"

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None) -> dict:
        url = f"{self.base}{path}"
        try:
            response = self._session.request(
                method, url, json=body, params=params, headers=self._headers, timeout=self.timeout_s
            )
        except requests.Timeout:
            raise ClientError(f"{method} {url}: no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as error:
            raise ClientError(f"{method} {url}: cannot connect ({type(error).__name__})") from None
        if response.status_code in (401, 403):
            raise ClientError(
                f"{method} {url}: the API key was refused (HTTP {response.status_code}); check RUNPOD_API_KEY"
            )
        if response.status_code >= 400:
            raise ClientError(f"{method} {url}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            data = response.json()
        except ValueError:
            raise ClientError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise ClientError(f"{method} {url}: unexpected answer {str(data)[:200]!r}")
        return data

    def _read(self, path: str) -> dict:
        # the cloud API reads status and stream with GET; the SDK's local server only accepts POST
        return self._request("POST", path) if self.local else self._request("GET", path)

    # -------------------------------------------------------------- operations

    def run(self, job_input: dict, *, webhook: str | None = None) -> str:
        """Queue a job; return its id."""
        body: dict[str, Any] = {"input": job_input}
        if webhook:
            body["webhook"] = webhook
        answer = self._request("POST", "/run", body=body)
        if not answer.get("id"):
            raise ClientError(f"/run returned no job id: {answer}")
        return str(answer["id"])

    def status(self, job_id: str) -> dict:
        return self._read(f"/status/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/cancel/{job_id}")

    def wait(self, job_id: str, *, timeout_s: float = 900.0, on_status: Callable[[dict], None] | None = None) -> dict:
        """Poll /status until the job reaches a final state; return that status response."""
        deadline = time.monotonic() + timeout_s
        interval = self.poll_interval_s
        while True:
            job = self.status(job_id)
            if on_status:
                on_status(job)
            if job.get("status") in FINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} is still {job.get('status')} after {timeout_s:g} s")
            time.sleep(interval)
            interval = min(interval * 1.5, max(self.poll_interval_s, 5.0))

    def runsync(self, job_input: dict, *, wait_ms: int | None = None, timeout_s: float = 900.0) -> dict:
        """Run a job synchronously; if RunPod answers before it ends (long jobs), poll until it does."""
        params = {"wait": int(wait_ms)} if wait_ms and not self.local else None
        job = self._request("POST", "/runsync", body={"input": job_input}, params=params)
        if job.get("status") in FINAL_STATES:
            return job
        if not job.get("id"):
            raise ClientError(f"/runsync returned neither a result nor a job id: {job}")
        return self.wait(str(job["id"]), timeout_s=timeout_s)

    def stream(self, job_id: str, *, timeout_s: float = 900.0) -> Iterator[Any]:
        """Yield the job's streamed outputs in order until the job ends.

        Each /stream answer carries the chunks produced since the previous call, as
        ``{"status": ..., "stream": [{"output": ...}, ...]}``. A failed job raises :class:`JobFailed`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._read(f"/stream/{job_id}")
            for chunk in answer.get("stream") or []:
                yield chunk.get("output") if isinstance(chunk, dict) and "output" in chunk else chunk
            state = answer.get("status")
            if state in FINAL_STATES:
                if state != "COMPLETED":
                    raise JobFailed(f"job {job_id} {state}: {job_error(answer)}", answer)
                return
            if time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} is still streaming after {timeout_s:g} s")
            time.sleep(self.poll_interval_s)

    # --------------------------------------------------------------- synthesis

    def synthesize(self, job_input: dict, *, mode: str = "runsync", timeout_s: float = 900.0) -> dict:
        """Run one job in ``mode`` and return its output (for ``stream``: ``{"chunks": [...]}``).

        Raises :class:`JobFailed` with the worker's error message when the job fails.
        """
        if mode == "stream":
            job_id = self.run({**job_input, "stream": True})
            chunks = list(self.stream(job_id, timeout_s=timeout_s))
            failed = [c for c in chunks if isinstance(c, dict) and c.get("error")]
            if failed:
                raise JobFailed(f"job {job_id} failed: {failed[-1]['error']}", {"id": job_id, "stream": chunks})
            return {"id": job_id, "chunks": chunks}
        if mode == "runsync":
            job = self.runsync(job_input, timeout_s=timeout_s)
        elif mode == "run":
            job = self.wait(self.run(job_input), timeout_s=timeout_s)
        else:
            raise ClientError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        output = job.get("output")
        if isinstance(output, list) and len(output) == 1:  # a streaming endpoint wraps every output in a list
            output = job["output"] = output[0]
        if job.get("status") != "COMPLETED" or (isinstance(output, dict) and output.get("error")):
            raise JobFailed(f"job {job.get('id')} {job.get('status')}: {job_error(job)}", job)
        if not isinstance(output, dict):
            raise ClientError(f"job {job.get('id')} returned no output object: {str(output)[:200]!r}")
        return {"id": job.get("id"), **output}


# ------------------------------------------------------------------- audio files


def save_audio(output: dict, path: str | os.PathLike) -> Path:
    """Write a job's audio (inline ``audio_b64``, or downloaded from ``audio_url`` when the worker uploaded it)."""
    output = output if isinstance(output, dict) else {}
    if output.get("audio_b64"):
        data = base64.b64decode(output["audio_b64"], validate=True)
    elif output.get("audio_url"):
        response = requests.get(output["audio_url"], timeout=120)
        if response.status_code != 200:
            raise ClientError(f"downloading audio_url answered HTTP {response.status_code}")
        data = response.content
    else:
        raise ClientError("the output has neither audio_b64 nor audio_url")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def save_stream(chunks: list, path: str | os.PathLike) -> Path:
    """Join streamed audio chunks into one WAV at ``path``.

    A chunk is a dict with ``audio_b64``: a WAV file, or raw PCM when ``encoding`` is ``pcm_s16le``
    (vv-worker's streamed chunks; then ``sample_rate`` is required). Chunks without audio (the final
    summary) are skipped.
    """
    import numpy as np
    import soundfile as sf

    pieces, rate = [], None
    for chunk in chunks:
        if not isinstance(chunk, dict) or not chunk.get("audio_b64"):
            continue
        raw = base64.b64decode(chunk["audio_b64"], validate=True)
        if chunk.get("encoding") == "pcm_s16le":
            samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            chunk_rate = int(chunk["sample_rate"])
        else:
            samples, chunk_rate = sf.read(io.BytesIO(raw), dtype="float32")
        if rate is not None and chunk_rate != rate:
            raise ClientError(f"streamed chunks disagree on the sample rate ({rate} and {chunk_rate})")
        rate = chunk_rate
        pieces.append(samples)
    if not pieces:
        raise ClientError("the stream held no audio")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate(pieces), rate, subtype="PCM_16")
    return path


# -------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vv_worker.client",
        description="Synthesize speech with a deployed vv-worker (RunPod endpoint or local API server).",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="RunPod endpoint id (API key from RUNPOD_API_KEY)")
    target.add_argument("--local", metavar="URL", help="the SDK's local API server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--text", required=True, help="what to say")
    parser.add_argument("--out", default="out.wav", help="WAV file to write (default out.wav)")
    parser.add_argument("--voice", help="library voice name")
    parser.add_argument("--seed", type=int, help="seed, for repeatable output")
    parser.add_argument("--mode", choices=MODES, default="runsync", help="how to submit the job (default runsync)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the job (default 900)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--base-url", help="API base URL (default $RUNPOD_ENDPOINT_BASE_URL or https://api.runpod.ai/v2)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    job_input: dict[str, Any] = {"text": args.text}
    if args.voice:
        job_input["voice"] = args.voice
    if args.seed is not None:
        job_input["seed"] = args.seed
    try:
        client = RunPodClient(
            args.endpoint,
            api_key=None if args.local else os.environ.get("RUNPOD_API_KEY"),
            base_url=args.base_url,
            local_url=args.local,
            poll_interval_s=args.poll_interval,
        )
        started = time.monotonic()
        output = client.synthesize(job_input, mode=args.mode, timeout_s=args.timeout)
        if args.mode == "stream":
            path = save_stream(output["chunks"], args.out)
            summary = f"{len(output['chunks'])} streamed chunk(s)"
        else:
            path = save_audio(output, args.out)
            summary = f"{output.get('duration_seconds', 0):.2f} s of audio, voice {output.get('voice_used')}"
    except ClientError as error:
        print(f"vv-worker client: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({summary}; job {output.get('id')}, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
