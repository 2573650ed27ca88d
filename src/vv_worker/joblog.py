"""One JSON line per job event: ``received``, ``started``, ``finished``, ``failed``.

Only whitelisted facts are logged (job id, text length, voice source, frames, real-time factor,
durations, the error message), never the text itself, audio or base64 data. Everything that is
logged also goes through :func:`scrub`, which removes what looks like a secret: long base64 runs,
Hugging Face (``hf_...``) and RunPod (``rpa_...``) tokens, ``Bearer``/``Authorization`` values,
values of keys named like a token, key, secret or password, and URL query strings and credentials.

    events = JobEvents.received(job)          # when the handler gets the job
    events.started()                          # just before synthesis
    events.done(output)                       # finished, or failed when output has "error"
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

LOGGER_NAME = "vv_worker.jobs"
log = logging.getLogger(LOGGER_NAME)

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{65,}={0,2}")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_RUNPOD_KEY = re.compile(r"\brpa_[A-Za-z0-9]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]+=*")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization|x-api-key|api[-_]?key)\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?\S+")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s\"'<>]+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # no UTF-8 stream can write one: the whole line would be lost
_SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[-_]?key|authorization|credential|^key$|_key$)")


def _strip_url(match: re.Match) -> str:
    try:
        parts = urlsplit(match.group(0))
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "[url]"


def scrub_text(text: str) -> str:
    """``text`` with URL queries and credentials, tokens, keys and long base64 runs removed (and lone surrogates
    replaced by U+FFFD)."""
    text = _SURROGATE.sub("\ufffd", text)
    text = _URL.sub(_strip_url, text)
    text = _HF_TOKEN.sub("[hf-token]", text)
    text = _RUNPOD_KEY.sub("[runpod-key]", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}: [redacted]", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} [redacted]", text)
    return _BASE64_RUN.sub(lambda m: f"[base64 {len(m.group(0))} chars]", text)


def scrub(value: Any, key: str | None = None) -> Any:
    """A copy of ``value`` safe to log (see the module docstring)."""
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", 0):
        return "[redacted]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {scrub_text(str(k)): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub_text(str(value))


def log_event(event: str, job_id: object, **fields: Any) -> dict:
    """Log one event as a single JSON line on the ``vv_worker.jobs`` logger; return the record."""
    record = {"event": event, "job_id": None if job_id is None else str(job_id)}
    record.update({key: value for key, value in fields.items() if value is not None})
    record = scrub(record)
    log.info(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
    return record


def describe_input(job_input: object) -> dict:
    """The loggable facts about a request: text length and where the voice comes from."""
    if not isinstance(job_input, dict):
        return {"input_type": type(job_input).__name__}
    text = job_input.get("text")
    facts: dict[str, Any] = {"text_length": len(text) if isinstance(text, str) else None}
    if job_input.get("voice"):
        facts["voice_source"] = "library"
        facts["voice"] = str(job_input["voice"])[:64]
    elif job_input.get("reference_audio"):
        facts["voice_source"] = "reference_audio"
        facts["reference_audio_chars"] = len(str(job_input["reference_audio"]))
    elif job_input.get("reference_audio_url"):
        facts["voice_source"] = "reference_audio_url"
        try:
            facts["reference_audio_host"] = urlsplit(str(job_input["reference_audio_url"])).hostname
        except ValueError:
            facts["reference_audio_host"] = None
    else:
        facts["voice_source"] = "default"
    if isinstance(job_input.get("seed"), int):
        facts["seed"] = job_input["seed"]
    return facts


def describe_output(output: object) -> dict:
    """The loggable facts about a successful response (never the audio)."""
    if not isinstance(output, dict):
        return {}
    metrics = output.get("metrics") if isinstance(output.get("metrics"), dict) else {}
    return {
        "voice_used": output.get("voice_used"),
        "seed_used": output.get("seed_used"),
        "finish_reason": output.get("finish_reason"),
        "audio_seconds": output.get("duration_seconds"),
        "frames": metrics.get("frames"),
        "frame_cap": metrics.get("frame_cap"),
        "real_time_factor": metrics.get("real_time_factor"),
        "generation_seconds": metrics.get("generation_seconds"),
        "warnings": len(output.get("warnings") or []) or None,
    }


class JobEvents:
    """The events of one job, with the durations between them (monotonic clock)."""

    def __init__(self, job_id: object, clock=time.monotonic):
        self.job_id = job_id
        self._clock = clock
        self.received_at = clock()
        self.started_at: float | None = None

    @classmethod
    def received(cls, job: object, clock=time.monotonic) -> JobEvents:
        job = job if isinstance(job, dict) else {}
        events = cls(job.get("id"), clock)
        log_event("received", events.job_id, **describe_input(job.get("input")))
        return events

    def started(self) -> None:
        self.started_at = self._clock()
        log_event("started", self.job_id, wait_seconds=round(self.started_at - self.received_at, 4))

    def _durations(self) -> dict:
        now = self._clock()
        started = self.started_at if self.started_at is not None else self.received_at
        return {"run_seconds": round(now - started, 4), "total_seconds": round(now - self.received_at, 4)}

    def finished(self, output: dict) -> dict:
        return log_event("finished", self.job_id, **describe_output(output), **self._durations())

    def failed(self, error: object) -> dict:
        message = str(error.get("error")) if isinstance(error, dict) else str(error)
        return log_event("failed", self.job_id, error=message[:500], **self._durations())

    def done(self, output: object) -> dict:
        """``finished`` for a normal output, ``failed`` for ``{"error": ...}``."""
        if isinstance(output, dict) and "error" in output:
            return self.failed(output)
        return self.finished(output if isinstance(output, dict) else {})


def install_json_handler(stream=None, level: int = logging.INFO) -> logging.Handler:
    """Send the job events, as bare JSON lines, to ``stream`` (stdout by default) and nowhere else."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for old in [h for h in log.handlers if getattr(h, "_vv_joblog", False)]:
        log.removeHandler(old)
    handler._vv_joblog = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler
