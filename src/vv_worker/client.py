"""A client for a deployed vv-worker, built on the runpod SDK's ``Endpoint`` and ``Job``.

Cloud (``https://api.runpod.ai/v2/{endpoint}``, ``Authorization: Bearer $RUNPOD_API_KEY``): the SDK's
``Endpoint`` submits jobs and its HTTP client (auth, retries, ``RUNPOD_ENDPOINT_BASE_URL``) carries every
call. Local (``python -m vv_worker.handler --rp_serve_api``): the same ``Endpoint``/``Job`` over
:class:`LocalServer`, because the SDK's local server has no endpoint id, no key, and takes status and
stream as POST. On top of the SDK this module adds what its ``run_sync``/``Job.output``/``Job.stream``
lack: the worker's error message on failure, a time limit, and ending a stream when the job fails.

    python -m vv_worker.client --endpoint ENDPOINT_ID --text "Hello there." --out hello.wav
    python -m vv_worker.client --local http://127.0.0.1:8000 --text "Hello." --out hello.mp3 --mode run

The API key is read from ``RUNPOD_API_KEY`` (else the SDK's ``runpod config`` file) and never printed.
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
from runpod.endpoint.runner import Endpoint, Job

from .limits import OUTPUT_FORMATS

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
MODES = ("runsync", "run", "stream")
# the file extensions each of the worker's output formats is written to (ogg holds Opus)
EXTENSIONS = {name: (f".{name}", *{"ogg": (".opus", ".oga")}.get(name, ())) for name in OUTPUT_FORMATS}
SPEAKER_HELP = "voice of Speaker N: a library name or an audio file (repeatable)"
STREAM_FIX = (
    "this endpoint does not stream: set VV_STREAMING=true on it (its outputs then become lists, see docs/API.md), "
    "or use --mode runsync or --mode run"
)


class ClientError(RuntimeError):
    """The API could not be reached, answered something unusable, or the request cannot be made."""


class JobFailed(ClientError):
    """The job ended in a state other than COMPLETED; ``job`` holds the last status response."""

    def __init__(self, message: str, job: dict):
        super().__init__(message)
        self.job = job


def job_error(job: dict) -> str:
    """The error message of a failed job, wherever the API put it, with the fix for a non-streaming endpoint."""
    output = job.get("output")
    if isinstance(output, list) and output and isinstance(output[-1], dict):
        output = output[-1]  # a streaming endpoint's outputs are lists; a failure is the last item
    if isinstance(output, dict) and output.get("error"):
        message = str(output["error"])
    elif job.get("error"):
        message = str(job["error"])
    else:
        return f"the job ended with status {job.get('status')}"
    if "Stream not supported" in message:  # the SDK's local server, for a handler that is not a generator
        message = f"{message} ({STREAM_FIX})"
    return message


class LocalServer:
    """The SDK's local API server behind the interface of the SDK's HTTP client (``post``/``get``).

    Paths come as the SDK's ``Endpoint``/``Job`` build them (``{endpoint_id}/run``) with an empty
    endpoint id; reads are sent as POST, the only method the local server takes.
    """

    def __init__(self, url: str, session: requests.Session | None = None):
        self.endpoint_url_base = url.rstrip("/")
        self.rp_session = session or requests.Session()

    def post(self, endpoint: str, data: dict | None, timeout: float = 10):
        response = self.rp_session.post(f"{self.endpoint_url_base}/{endpoint.lstrip('/')}", json=data, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def get(self, endpoint: str, timeout: float = 10):
        return self.post(endpoint, None, timeout)


class LocalEndpoint(Endpoint):
    """The SDK's ``Endpoint`` pointed at the local server (its own ``__init__`` would demand an API key)."""

    def __init__(self, url: str):
        self.endpoint_id = ""
        self.rp_client = LocalServer(url)


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
    ):
        self.local = local_url is not None
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        if self.local:
            self.endpoint: Endpoint = LocalEndpoint(local_url)
        else:
            import runpod

            if not endpoint_id:
                raise ClientError("an endpoint id is needed (or a local server URL)")
            api_key = api_key or runpod.api_key  # the SDK's `runpod config` credentials
            if not api_key:
                raise ClientError("no API key: set RUNPOD_API_KEY")
            self.endpoint = Endpoint(endpoint_id, api_key=api_key)
            if base_url:
                self.endpoint.rp_client.endpoint_url_base = base_url.rstrip("/")
        self.base = f"{self.endpoint.rp_client.endpoint_url_base}/{self.endpoint.endpoint_id}".rstrip("/")

    def __repr__(self) -> str:  # never shows the key
        return f"RunPodClient(base={self.base!r}, local={self.local})"

    # ------------------------------------------------------------------ HTTP

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK call; its exceptions become a :class:`ClientError` that says what failed, never the key."""
        try:
            answer = call(*args, **kwargs)
        except requests.Timeout:
            limit = kwargs.get("timeout")
            raise ClientError(f"{what} at {self.base}: no answer within {limit or 10:g} s") from None
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else "?"
            if code in (401, 403):
                raise ClientError(f"{what}: the API key was refused (HTTP {code}); check RUNPOD_API_KEY") from None
            body = error.response.text[:300] if error.response is not None else ""
            raise ClientError(f"{what} at {self.base}: HTTP {code}: {body}") from None
        except requests.JSONDecodeError:
            raise ClientError(f"{what} at {self.base}: the answer is not JSON") from None
        except requests.RequestException as error:
            raise ClientError(f"{what} at {self.base}: cannot connect ({type(error).__name__})") from None
        except RuntimeError as error:  # the SDK's client raises RuntimeError for HTTP 401
            if "401" in str(error):
                raise ClientError(f"{what}: the API key was refused (HTTP 401); check RUNPOD_API_KEY") from None
            raise
        return answer

    def _answer(self, what: str, answer: Any) -> dict:
        if not isinstance(answer, dict):
            raise ClientError(f"{what}: unexpected answer {str(answer)[:200]!r}")
        return answer

    def job(self, job: Job | str) -> Job:
        """The SDK's ``Job`` for a job id (or the job itself)."""
        return job if isinstance(job, Job) else Job(self.endpoint.endpoint_id, str(job), self.endpoint.rp_client)

    # -------------------------------------------------------------- operations

    def run(self, job_input: dict, *, webhook: str | None = None) -> Job:
        """Queue a job with the SDK's ``Endpoint.run``; return its ``Job``."""
        body: dict[str, Any] = {"input": job_input, **({"webhook": webhook} if webhook else {})}
        try:
            return self._call("/run", self.endpoint.run, body)
        except (KeyError, TypeError):
            raise ClientError("/run returned no job id") from None

    def status(self, job: Job | str) -> dict:
        job = self.job(job)
        path = f"{job.endpoint_id}/status/{job.job_id}"
        return self._answer("/status", self._call("/status", job.rp_client.get, path, timeout=self.timeout_s))

    def cancel(self, job: Job | str) -> dict:
        return self._answer("/cancel", self._call("/cancel", self.job(job).cancel, timeout=self.timeout_s))

    def wait(
        self, job: Job | str, *, timeout_s: float = 900.0, on_status: Callable[[dict], None] | None = None
    ) -> dict:
        """Poll /status until the job reaches a final state; return that status response."""
        job = self.job(job)
        deadline = time.monotonic() + timeout_s
        interval = self.poll_interval_s
        while True:
            state = self.status(job)
            if on_status:
                on_status(state)
            if state.get("status") in FINAL_STATES:
                return state
            if time.monotonic() >= deadline:
                raise ClientError(f"job {job.job_id} is still {state.get('status')} after {timeout_s:g} s")
            time.sleep(interval)
            interval = min(interval * 1.5, max(self.poll_interval_s, 5.0))

    def runsync(self, job_input: dict, *, wait_ms: int | None = None, timeout_s: float = 900.0) -> dict:
        """Run a job synchronously; if RunPod answers before it ends (long jobs), poll until it does.

        Not the SDK's ``run_sync``: that returns only the output, so a failed job's error is lost.
        """
        path = f"{self.endpoint.endpoint_id}/runsync"
        if wait_ms and not self.local:
            path += f"?wait={int(wait_ms)}"
        answer = self._call("/runsync", self.endpoint.rp_client.post, path, {"input": job_input}, timeout=timeout_s)
        answer = self._answer("/runsync", answer)
        if answer.get("status") in FINAL_STATES:
            return answer
        if not answer.get("id"):
            raise ClientError(f"/runsync returned neither a result nor a job id: {str(answer)[:200]}")
        return self.wait(answer["id"], timeout_s=timeout_s)

    def stream(self, job: Job | str, *, timeout_s: float = 900.0) -> Iterator[Any]:
        """Yield the job's streamed outputs in order until the job ends.

        Each /stream answer carries the chunks produced since the previous call, as
        ``{"status": ..., "stream": [{"output": ...}, ...]}``. A failed job raises :class:`JobFailed`
        (the SDK's ``Job.stream`` would end silently and has no time limit).
        """
        job = self.job(job)
        path = f"{job.endpoint_id}/stream/{job.job_id}"
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._answer("/stream", self._call("/stream", job.rp_client.get, path, timeout=self.timeout_s))
            for chunk in answer.get("stream") or []:
                yield chunk.get("output") if isinstance(chunk, dict) and "output" in chunk else chunk
            state = answer.get("status")
            if state in FINAL_STATES:
                if state != "COMPLETED":
                    raise JobFailed(f"job {job.job_id} {state}: {job_error(answer)}", answer)
                return
            if time.monotonic() >= deadline:
                raise ClientError(f"job {job.job_id} is still streaming after {timeout_s:g} s")
            time.sleep(self.poll_interval_s)

    # --------------------------------------------------------------- synthesis

    def synthesize(self, job_input: dict, *, mode: str = "runsync", timeout_s: float = 900.0) -> dict:
        """Run one job in ``mode`` and return its output (for ``stream``: ``{"id", "chunks": [...]}``).

        Raises :class:`JobFailed` with the worker's error message when the job fails.
        """
        if mode == "stream":
            job = self.run({**job_input, "stream": True})
            chunks = list(self.stream(job, timeout_s=timeout_s))
            failed = [c for c in chunks if isinstance(c, dict) and c.get("error")]
            if failed:
                raise JobFailed(f"job {job.job_id} failed: {failed[-1]['error']}", {"id": job.job_id, "stream": chunks})
            return {"id": job.job_id, "chunks": chunks}
        if mode == "runsync":
            state = self.runsync(job_input, timeout_s=timeout_s)
        elif mode == "run":
            state = self.wait(self.run(job_input), timeout_s=timeout_s)
        else:
            raise ClientError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        output = state.get("output")
        if isinstance(output, list) and len(output) == 1:  # a streaming endpoint wraps every output in a list
            output = state["output"] = output[0]
        if state.get("status") != "COMPLETED" or (isinstance(output, dict) and output.get("error")):
            raise JobFailed(f"job {state.get('id')} {state.get('status')}: {job_error(state)}", state)
        if not isinstance(output, dict):
            raise ClientError(f"job {state.get('id')} returned no output object: {str(output)[:200]!r}")
        return {"id": state.get("id"), **output}


# ------------------------------------------------------------------- audio files


def output_format_for(path: str | os.PathLike | None, given: str | None) -> str:
    """The output format: ``given``, else the one ``path``'s extension names, else wav.

    A path whose extension belongs to another format than ``given`` is refused, so a file's name
    never lies about its bytes; an extension no format uses needs ``given``.
    """
    suffix = Path(path).suffix.lower() if path is not None else ""
    named = next((fmt for fmt, suffixes in EXTENSIONS.items() if suffix in suffixes), None)
    if given is not None:
        if named is not None and named != given:
            raise ClientError(f"--out {path} names {named} but --format is {given}; make them agree")
        return given
    if named is not None:
        return named
    if suffix:
        raise ClientError(f"--out {path}: cannot tell the format from {suffix!r}; give --format {'|'.join(EXTENSIONS)}")
    return "wav"


def audio_file_base64(path: str | os.PathLike, option: str) -> str:
    """An audio file's bytes as base64 for ``reference_audio`` (the worker decodes and checks it)."""
    path = Path(path)
    if not path.is_file():
        raise ClientError(f"{option} {path}: no such file")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def speaker_sources(items: list[str]) -> dict[str, Any]:
    """``--speaker N=VOICE`` options -> the request's ``speakers``: an audio file becomes a reference."""
    speakers: dict[str, Any] = {}
    for item in items:
        number, sep, voice = (part.strip() for part in item.partition("="))
        if not (sep and number and voice):
            raise ClientError(f"--speaker {item!r}: expected N=VOICE, e.g. --speaker 1=carter or --speaker 1=me.wav")
        if number in speakers:
            raise ClientError(f"--speaker {number} is given twice")
        is_file = Path(voice).is_file()
        speakers[number] = {"reference_audio": audio_file_base64(voice, "--speaker")} if is_file else voice
    return speakers


def save_audio(output: dict, path: str | os.PathLike, expected_format: str | None = None) -> Path:
    """Write a job's audio (inline ``audio_b64``, or downloaded from ``audio_url`` when the worker uploaded it)."""
    output = output if isinstance(output, dict) else {}
    if expected_format and output.get("format") not in (None, expected_format):
        raise ClientError(f"asked for {expected_format} but the worker returned {output.get('format')}")
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
    parser.add_argument("--text", required=True, help="what to say: plain text or 'Speaker N:' lines")
    parser.add_argument("--out", help="file to write (default out.<format>)")
    parser.add_argument(
        "--format", choices=list(EXTENSIONS), help="output format (default: from --out's extension, else wav)"
    )
    voice = parser.add_mutually_exclusive_group()
    voice.add_argument("--voice", help="library voice name")
    voice.add_argument("--reference", metavar="FILE", help="an audio file of the voice to clone")
    parser.add_argument("--speaker", action="append", default=[], metavar="N=VOICE", help=SPEAKER_HELP)
    parser.add_argument("--seed", type=int, help="seed, for repeatable output")
    parser.add_argument("--mode", choices=MODES, default="runsync", help="how to submit the job (default runsync)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the job (default 900)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--base-url", help="API base URL (default $RUNPOD_ENDPOINT_BASE_URL or https://api.runpod.ai/v2)"
    )
    return parser


def build_input(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The job input for the CLI's options, and the output format (checked against ``--out``)."""
    output_format = output_format_for(args.out, args.format)
    if args.mode == "stream" and output_format != "wav":
        raise ClientError(f"--mode stream writes WAV (streamed chunks are PCM); not {output_format}")
    job_input: dict[str, Any] = {"text": args.text}
    if output_format != "wav":
        job_input["output_format"] = output_format
    if args.voice:
        job_input["voice"] = args.voice
    if args.reference:
        job_input["reference_audio"] = audio_file_base64(args.reference, "--reference")
    if args.speaker:
        job_input["speakers"] = speaker_sources(args.speaker)
    if args.seed is not None:
        job_input["seed"] = args.seed
    return job_input, output_format


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        job_input, output_format = build_input(args)
        out = args.out or f"out.{output_format}"
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
            path = save_stream(output["chunks"], out)
            summary = f"{len(output['chunks'])} streamed chunk(s)"
        else:
            path = save_audio(output, out, expected_format=output_format)
            summary = f"{output.get('duration_seconds', 0):.2f} s of audio, voice {output.get('voice_used')}"
    except ClientError as error:
        print(f"vv-worker client: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({summary}; job {output.get('id')}, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
