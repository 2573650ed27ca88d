"""OpenAI's ``audio.speech`` wire format: the request, its mapping to a worker request, errors, models, SSE.

Every field of OpenAI's request either works or is refused with a 400 naming it:

- ``model``: one of :func:`model_ids` (the loaded checkpoint, ``vibevoice`` and OpenAI's names
  ``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``); all of them are the one loaded model.
- ``input``: the worker's ``text`` (plain text or a ``Speaker N:`` script).
- ``voice``: a library voice (OpenAI's voice names are not in the library and are refused with the list).
- ``response_format``: mp3 (OpenAI's default), opus, aac, flac, wav, pcm; ``stream_format``: audio or sse.
- ``speed``: pitch-preserving time stretch, 0.5 to 2.0 (OpenAI allows 0.25 to 4; outside 0.5 to 2.0 is refused).
- ``instructions``: refused when not empty: VibeVoice takes no style prompt; the voice prompt sets the style.

Extensions (the worker's own fields): ``seed``, ``cfg_scale``, ``diffusion_steps``, ``temperature``,
``reference_audio``, ``reference_audio_url``, ``speakers``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import limits

OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SPEECH_FIELDS_TO_WORKER = {  # OpenAI field -> the worker request's field
    "input": "text",
    "voice": "voice",
    "seed": "seed",
    "cfg_scale": "cfg_scale",
    "diffusion_steps": "diffusion_steps",
    "reference_audio": "reference_audio",
    "reference_audio_url": "reference_audio_url",
    "speakers": "speakers",
}


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``. Unknown fields are refused, values are never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    input: str
    voice: str | None = Field(None, min_length=1, max_length=128)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: limits.SPEED.annotated() = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None
    # extensions, validated by the worker's own request model
    seed: Any = None
    cfg_scale: Any = None
    diffusion_steps: Any = None
    temperature: Any = None
    reference_audio: Any = None
    reference_audio_url: Any = None
    speakers: Any = None

    def worker_payload(self) -> dict:
        """The worker's request for the same speech, streamed as generated (speed is applied here after)."""
        payload: dict[str, Any] = {"stream": True}
        for name, target in SPEECH_FIELDS_TO_WORKER.items():
            value = getattr(self, name)
            if value is not None:
                payload[target] = value
        if self.temperature is not None:
            payload["voice_settings"] = {"temperature": self.temperature}
        return payload


class SpeechError(Exception):
    """A refused request, in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def model_ids(served: str) -> list[str]:
    """Names accepted in ``model``: the loaded checkpoint (id and folder name), ``vibevoice``, OpenAI's names."""
    names = [served, served.rstrip("/").rsplit("/", 1)[-1], "vibevoice", *OPENAI_MODEL_NAMES]
    return list(dict.fromkeys(names))


def models_list(served: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "vv-worker"} for name in model_ids(served)
        ],
    }


def parse_speech(body: object, served_model: str) -> SpeechRequest:
    """Validate a speech request; raise :class:`SpeechError` naming the field."""
    if not isinstance(body, dict):
        raise SpeechError(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        request = SpeechRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        messages = []
        for item in error.errors():
            loc = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                messages.append(f"{loc}: unknown field; allowed fields are: {', '.join(SpeechRequest.model_fields)}")
            elif item["type"] == "missing":
                messages.append(f"{loc}: required field is missing")
            else:
                shown = repr(item.get("input"))
                shown = shown[:57] + "..." if len(shown) > 60 else shown
                allowed = f"; allowed: {limits.SPEED.allowed}" if loc == "speed" else ""
                messages.append(f"{loc}: {item['msg']} (got {shown}){allowed}")
        raise SpeechError("invalid request: " + "; ".join(messages), param) from None
    if request.model not in model_ids(served_model):
        raise SpeechError(
            f"model: {request.model!r} is not served here; use one of: {', '.join(model_ids(served_model))}",
            "model",
            status=404,
        )
    if request.instructions:
        raise SpeechError(
            "instructions: not supported: VibeVoice takes no style instructions; the voice prompt (voice, "
            "reference_audio or speakers) sets how it sounds. Leave instructions out or empty.",
            "instructions",
        )
    return request


_WORKER_TO_SPEECH = {"text": "input", "voice_settings.temperature": "temperature"}
_FIELD = re.compile(r"^(?:invalid input: )?([\w.]+): ")


def from_worker_error(error: Exception) -> SpeechError:
    """A worker request error, with its field named as the speech request names it."""
    message = str(error)
    for worker_name, speech_name in _WORKER_TO_SPEECH.items():
        message = re.sub(rf"(^|: |; ){re.escape(worker_name)}(?=[.:])", rf"\g<1>{speech_name}", message)
    match = _FIELD.match(message)
    return SpeechError(message, match.group(1).split(".")[0] if match else None)


def sse_event(event: dict) -> str:
    """One server-sent event as OpenAI sends them: a ``data:`` line and a blank line."""
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
