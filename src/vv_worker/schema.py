"""Request model (pydantic v2) and the one place every request limit lives.

Field names follow the original VibeVoice worker API (``text``, ``reference_audio``,
``reference_audio_url``, ``voice_settings``) so its clients keep working.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

DEFAULT_MAX_TEXT_CHARS = 5000
SEED_MAX = 2**32 - 1
SPEED_RANGE = (0.5, 2.0)
TEMPERATURE_RANGE = (0.0, 2.0)  # exclusive lower bound
CFG_SCALE_RANGE = (1.0, 10.0)
DIFFUSION_STEPS_RANGE = (1, 50)
SAMPLE_RATE_RANGE = (8000, 48000)
LOUDNESS_RANGE = (-50.0, -5.0)  # target LUFS for ``normalize``
OutputFormat = Literal["wav", "flac", "mp3", "ogg"]

_KEEP_CONTROL = {"\n", "\t"}


def clean_text(text: str) -> str:
    """Remove control characters (keeping newlines and tabs) and trim the ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in _KEEP_CONTROL or unicodedata.category(ch) != "Cc").strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VoiceSettings(_Strict):
    """Delivery settings of the original API."""

    temperature: float | None = Field(
        None,
        gt=TEMPERATURE_RANGE[0],
        le=TEMPERATURE_RANGE[1],
        description="Sample the LM's next token at this temperature among the allowed tokens "
        "(unset: take the most likely one)",
    )
    speed: float = Field(
        1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], description="Pitch-preserving time stretch of the output"
    )


class SpeakerVoice(_Strict):
    """One speaker's voice: exactly one source."""

    voice: str | None = Field(None, min_length=1, max_length=128)
    reference_audio: str | None = Field(None, min_length=1)
    reference_audio_url: str | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SpeakerVoice:
        given = [name for name in ("voice", "reference_audio", "reference_audio_url") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of voice, reference_audio or reference_audio_url"
                + (f", got {' and '.join(given)}" if given else "")
            )
        return self


class SynthesisRequest(_Strict):
    """One text-to-speech job. Validate with :func:`parse_request`."""

    text: str = Field(description="What to say. Control characters are removed; never truncated.")
    voice: str | None = Field(None, min_length=1, max_length=128, description="A voice library name")
    reference_audio: str | None = Field(None, min_length=1, description="Base64 audio of the voice to clone")
    reference_audio_url: str | None = Field(
        None, min_length=1, max_length=4096, description="http(s) URL of the voice to clone"
    )
    voice_settings: VoiceSettings = Field(default_factory=VoiceSettings)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Same seed, text, voice and device: same audio")
    cfg_scale: float | None = Field(None, ge=CFG_SCALE_RANGE[0], le=CFG_SCALE_RANGE[1])
    diffusion_steps: int | None = Field(None, ge=DIFFUSION_STEPS_RANGE[0], le=DIFFUSION_STEPS_RANGE[1])
    speakers: dict[str, SpeakerVoice] | None = Field(
        None, description="Script speaker number -> library voice name, or an object with one voice source"
    )
    output_format: OutputFormat = "wav"
    sample_rate: int = Field(24000, ge=SAMPLE_RATE_RANGE[0], le=SAMPLE_RATE_RANGE[1])
    normalize: float | None = Field(
        None, ge=LOUDNESS_RANGE[0], le=LOUDNESS_RANGE[1], description="Target integrated loudness in LUFS"
    )
    trim_silence: bool = Field(False, description="Trim leading and trailing silence from the output")
    stream: bool = Field(False, description="Yield audio chunks while generating (needs VV_STREAMING=true)")
    action: Literal["synthesize"] = "synthesize"

    @field_validator("speakers", mode="before")
    @classmethod
    def _speaker_names_to_sources(cls, value: Any) -> Any:
        """Keys are the N of 'Speaker N:' lines; a bare string is a library voice name."""
        if isinstance(value, dict):
            for key in value:
                if not (isinstance(key, str) and re.fullmatch(r"\d{1,3}", key)):
                    raise ValueError(f"key {key!r} is not a speaker number (keys are the N of 'Speaker N:' lines)")
            return {key: {"voice": item} if isinstance(item, str) else item for key, item in value.items()}
        return value

    @field_validator("text")
    @classmethod
    def _clean_and_bound_text(cls, value: str, info: ValidationInfo) -> str:
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("text is empty after removing whitespace and control characters")
        limit = (info.context or {}).get("max_text_chars", DEFAULT_MAX_TEXT_CHARS)
        if len(cleaned) > limit:
            raise ValueError(
                f"text has {len(cleaned)} characters, more than the limit of {limit}; "
                "split it into several requests (it is never truncated)"
            )
        return cleaned

    @model_validator(mode="after")
    def _one_voice_source(self) -> SynthesisRequest:
        given = [name for name in ("voice", "reference_audio", "reference_audio_url") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give at most one voice source, got {' and '.join(given)}")
        return self


ALLOWED = {
    "seed": f"an integer from 0 to {SEED_MAX}",
    "cfg_scale": f"a number from {CFG_SCALE_RANGE[0]} to {CFG_SCALE_RANGE[1]}",
    "diffusion_steps": f"an integer from {DIFFUSION_STEPS_RANGE[0]} to {DIFFUSION_STEPS_RANGE[1]}",
    "voice_settings.speed": f"a number from {SPEED_RANGE[0]} to {SPEED_RANGE[1]}",
    "voice_settings.temperature": f"a number above {TEMPERATURE_RANGE[0]} and at most {TEMPERATURE_RANGE[1]}",
    "sample_rate": f"an integer from {SAMPLE_RATE_RANGE[0]} to {SAMPLE_RATE_RANGE[1]}",
    "normalize": f"a target loudness in LUFS from {LOUDNESS_RANGE[0]} to {LOUDNESS_RANGE[1]}, or null",
    "output_format": "wav, flac, mp3 or ogg",
    "action": "synthesize or list_voices",
}


class RequestError(ValueError):
    """The request is invalid; the message says which field, what was wrong and what is allowed."""


def _field_names(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _describe_error(item: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in item["loc"]) or "input"
    kind = item["type"]
    if kind == "extra_forbidden":
        parent = {"voice_settings": VoiceSettings, "speakers": SpeakerVoice}.get(str(item["loc"][0]), SynthesisRequest)
        return f"{loc}: unknown field; allowed fields are: {_field_names(parent)}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    message = re.sub(r"^Value error, ", "", item["msg"])
    value = item.get("input")
    if kind.startswith(("greater", "less", "finite")) or kind.endswith("_type") or kind == "literal_error":
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message} (got {shown})"
    if loc in ALLOWED:
        message = f"{message}; allowed: {ALLOWED[loc]}"
    elif loc.startswith("speakers.") and loc.count(".") == 1:
        message = f"{message}; allowed: a library voice name, or an object with one of {_field_names(SpeakerVoice)}"
    return f"{loc}: {message}"


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field.path: what was wrong (got value)``."""
    return "invalid input: " + "; ".join(_describe_error(item) for item in error.errors())


def parse_request(payload: Any, *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> SynthesisRequest:
    """Validate a job's ``input``; raise RequestError with a readable message."""
    if not isinstance(payload, dict):
        raise RequestError(f"invalid input: expected a JSON object, got {type(payload).__name__}")
    try:
        return SynthesisRequest.model_validate(payload, context={"max_text_chars": max_text_chars})
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None
