"""The request model (pydantic v2): each field's type, bounds and wording; errors that name the field.

This is the first step of planning (``plan.py``): the shape of one job's input. Checks that span
fields or need the worker's state (the script, the voices, the token count) are in ``plan.py``.
Field names follow the original VibeVoice worker API (``text``, ``reference_audio``,
``reference_audio_url``, ``voice_settings``) so its clients keep working.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from . import limits
from .limits import OUTPUT_FORMATS, OutputFormatName

_KEEP_CONTROL = {"\n", "\t"}
_VISIBLE = ("L", "N", "P", "S")  # Unicode categories that show: letters, numbers, punctuation, symbols
_SPEAKER_KEY = re.compile(rf"0|[1-9][0-9]{{0,{limits.SPEAKER_NUMBER_DIGITS - 1}}}")
_SURROGATE = re.compile("[\ud800-\udfff]")
VOICE_SOURCES = ("voice", "reference_audio", "reference_audio_url")


class RequestError(ValueError):
    """The request is invalid; the message says which field, what was wrong and what is allowed."""


def clean_text(text: str) -> str:
    """Remove control characters (keeping newlines and tabs) and trim the ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in _KEEP_CONTROL or unicodedata.category(ch) != "Cc").strip()


def echo(value: object) -> str:
    """``repr(value)`` for an error message: ASCII only, at most ``limits.ERROR_ECHO_CHARS`` characters."""
    shown = ascii(value)
    if len(shown) > limits.ERROR_ECHO_CHARS:
        shown = shown[: limits.ERROR_ECHO_CHARS - 3] + "..."
    return shown


def check_text(value: str, info: ValidationInfo) -> str:
    """A text (the request's or a segment's), cleaned: not empty, something visible, within the length limit."""
    cleaned = clean_text(value)
    if not cleaned:
        raise ValueError("text is empty after removing whitespace and control characters")
    if not any(unicodedata.category(ch).startswith(_VISIBLE) for ch in cleaned):
        raise ValueError(
            "text has no visible characters (only invisible ones such as zero-width spaces, byte-order marks "
            "or combining marks without a letter); nothing could be spoken"
        )
    limit = (info.context or {}).get("max_text_chars", limits.DEFAULT_MAX_TEXT_CHARS)
    if len(cleaned) > limit:
        raise ValueError(
            f"text has {len(cleaned)} characters, more than the limit of {limit}; "
            "split it into several requests (it is never truncated)"
        )
    return cleaned


def speaker_sources(value: Any) -> Any:
    """``speakers`` keys are the N of 'Speaker N:' lines, spelled one way only; a bare string is a voice name."""
    if isinstance(value, dict):
        for key in value:
            if not (isinstance(key, str) and _SPEAKER_KEY.fullmatch(key)):
                raise ValueError(
                    f"key {echo(key)} is not a speaker number; keys are the N of 'Speaker N:' lines written "
                    f"in ASCII digits without leading zeros (0 to {10**limits.SPEAKER_NUMBER_DIGITS - 1}), "
                    "so each speaker has one key"
                )
        return {key: {"voice": item} if isinstance(item, str) else item for key, item in value.items()}
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VoiceSettings(_Strict):
    """Delivery settings of the original API."""

    temperature: limits.TEMPERATURE.annotated() | None = Field(
        None,
        description="Sample the LM's next token at this temperature among the tokens VibeVoice may emit "
        "(unset: take the most likely one)",
    )
    speed: limits.SPEED.annotated() = Field(1.0, description="Pitch-preserving time stretch of the output")


class SpeakerVoice(_Strict):
    """One speaker's voice: exactly one source."""

    voice: str | None = Field(None, min_length=1, max_length=limits.VOICE_NAME_CHARS)
    reference_audio: str | None = Field(None, min_length=1)
    reference_audio_url: str | None = Field(None, min_length=1, max_length=limits.URL_CHARS)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SpeakerVoice:
        given = [name for name in VOICE_SOURCES if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of voice, reference_audio or reference_audio_url"
                + (f", got {' and '.join(given)}" if given else "")
            )
        return self


class Segment(_Strict):
    """One segment of a request with ``segments``: its text, and voices and seed that override the request's."""

    text: str = Field(description="What this segment says; may hold pause tags")
    voice: str | None = Field(None, min_length=1, max_length=limits.VOICE_NAME_CHARS)
    reference_audio: str | None = Field(None, min_length=1)
    reference_audio_url: str | None = Field(None, min_length=1, max_length=limits.URL_CHARS)
    speakers: dict[str, SpeakerVoice] | None = None
    seed: limits.SEED.annotated() | None = None

    @field_validator("speakers", mode="before")
    @classmethod
    def _speaker_keys_and_names(cls, value: Any) -> Any:
        return speaker_sources(value)

    @field_validator("text")
    @classmethod
    def _clean_and_bound_text(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @model_validator(mode="after")
    def _one_voice_source(self) -> Segment:
        given = [name for name in VOICE_SOURCES if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give at most one voice source, got {' and '.join(given)}")
        return self


class SynthesisRequest(_Strict):
    """One text-to-speech job. Validate with :func:`parse_request`."""

    # ``str`` with a None default: leaving text out is allowed (for segments), an explicit null is not
    text: str = Field(
        None, description="What to say; may hold pause tags. Control characters are removed; never truncated."
    )
    voice: str | None = Field(None, min_length=1, max_length=limits.VOICE_NAME_CHARS, description="A library voice")
    reference_audio: str | None = Field(None, min_length=1, description="Base64 audio of the voice to clone")
    reference_audio_url: str | None = Field(
        None, min_length=1, max_length=limits.URL_CHARS, description="http(s) URL of the voice to clone"
    )
    voice_settings: VoiceSettings = Field(default_factory=VoiceSettings)
    seed: limits.SEED.annotated() | None = Field(None, description="Same seed, text, voice and device: same audio")
    cfg_scale: limits.CFG_SCALE.annotated() | None = None
    diffusion_steps: limits.DIFFUSION_STEPS.annotated() | None = None
    speakers: dict[str, SpeakerVoice] | None = Field(
        None, description="Script speaker number -> library voice name, or an object with one voice source"
    )
    output_format: OutputFormatName = "wav"
    sample_rate: limits.OUTPUT_SAMPLE_RATE.annotated() = 24000
    normalize: limits.LOUDNESS_LUFS.annotated() | None = Field(None, description="Target integrated loudness, LUFS")
    trim_silence: bool = Field(False, description="Trim leading and trailing silence from the output")
    stream: bool = Field(False, description="Yield audio chunks while generating (needs VV_STREAMING=true)")
    segments: list[Segment] = Field(
        None, min_length=1, max_length=limits.MAX_SEGMENTS, description="Instead of text: one audio per segment"
    )
    concat: bool = Field(False, description="With segments: also return the segments joined, gap apart")
    gap: limits.GAP_SECONDS.annotated() | None = Field(
        None, description=f"With concat: seconds of silence between segments (default {limits.DEFAULT_GAP_SECONDS})"
    )
    action: Literal["synthesize"] = "synthesize"

    @field_validator("speakers", mode="before")
    @classmethod
    def _speaker_keys_and_names(cls, value: Any) -> Any:
        return speaker_sources(value)

    @field_validator("text")
    @classmethod
    def _clean_and_bound_text(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @model_validator(mode="after")
    def _one_voice_source(self) -> SynthesisRequest:
        given = [name for name in VOICE_SOURCES if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give at most one voice source, got {' and '.join(given)}")
        return self

    @model_validator(mode="after")
    def _text_or_segments(self, info: ValidationInfo) -> SynthesisRequest:
        if self.text is None and self.segments is None:
            raise ValueError("text: required field is missing (or give segments instead)")
        if self.text is not None and self.segments is not None:
            raise ValueError("give either text or segments, not both")
        if self.segments is None and (self.concat or self.gap is not None):
            raise ValueError("concat and gap apply to segments; this request has text")
        if self.gap is not None and not self.concat:
            raise ValueError("gap is the silence between segments in the concatenation; it needs concat: true")
        if self.segments:
            total = sum(len(segment.text) for segment in self.segments)
            limit = (info.context or {}).get("max_text_chars", limits.DEFAULT_MAX_TEXT_CHARS)
            if total > limit:
                raise ValueError(
                    f"the segments' texts have {total} characters together, more than the limit of {limit}; "
                    "split them into several requests (they are never truncated)"
                )
        return self

    @property
    def gap_seconds(self) -> float:
        return limits.DEFAULT_GAP_SECONDS if self.gap is None else self.gap


class RegisterVoiceRequest(_Strict):
    """``action: register_voice``: store a reference voice under a name, usable as ``voice`` afterwards."""

    action: Literal["register_voice"]
    name: str = Field(min_length=1, max_length=limits.VOICE_NAME_CHARS)
    reference_audio: str | None = Field(None, min_length=1)
    reference_audio_url: str | None = Field(None, min_length=1, max_length=limits.URL_CHARS)
    description: str | None = Field(None, max_length=limits.REGISTERED_VOICE_DESCRIPTION_CHARS)

    @model_validator(mode="after")
    def _one_reference(self) -> RegisterVoiceRequest:
        if (self.reference_audio is None) == (self.reference_audio_url is None):
            raise ValueError("give exactly one of reference_audio or reference_audio_url")
        return self


class DeleteVoiceRequest(_Strict):
    """``action: delete_voice``: remove a registered voice."""

    action: Literal["delete_voice"]
    name: str = Field(min_length=1, max_length=limits.VOICE_NAME_CHARS)


ALLOWED = {
    "seed": limits.SEED.allowed,
    "cfg_scale": limits.CFG_SCALE.allowed,
    "diffusion_steps": limits.DIFFUSION_STEPS.allowed,
    "voice_settings.speed": limits.SPEED.allowed,
    "voice_settings.temperature": limits.TEMPERATURE.allowed,
    "sample_rate": limits.OUTPUT_SAMPLE_RATE.allowed,
    "normalize": f"a target loudness in LUFS from {limits.LOUDNESS_LUFS.low:g} to {limits.LOUDNESS_LUFS.high:g}, "
    "or null",
    "output_format": ", ".join(OUTPUT_FORMATS),
    "action": "synthesize, list_voices, register_voice or delete_voice",
    "gap": limits.GAP_SECONDS.allowed + " (seconds)",
    "segments": f"a list of 1 to {limits.MAX_SEGMENTS} segments, each an object with text",
}


def _field_names(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def field_label(key: object) -> str:
    """A field name as an error shows it: as is when it looks like one of ours, else quoted and bounded."""
    return key if isinstance(key, str) and re.fullmatch(r"[a-z_]{1,32}|[0-9]{1,3}", key) else echo(key)


def _location(loc: tuple) -> str:
    return ".".join(field_label(str(part)) for part in loc) or "input"


def _parent_model(loc: tuple, root: type[BaseModel]) -> type[BaseModel]:
    """The model an unknown field at ``loc`` was found in."""
    names = {str(part) for part in loc[:-1]}
    for name, model in (("speakers", SpeakerVoice), ("voice_settings", VoiceSettings), ("segments", Segment)):
        if name in names:
            return model
    return root


def _describe_error(item: dict[str, Any], root: type[BaseModel] = SynthesisRequest) -> str:
    loc = _location(item["loc"])
    kind = item["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown field; allowed fields are: {_field_names(_parent_model(item['loc'], root))}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    message = re.sub(r"^Value error, ", "", item["msg"])
    if kind.startswith(("greater", "less", "finite")) or kind.endswith("_type") or kind == "literal_error":
        message = f"{message} (got {echo(item.get('input'))})"
    key = re.sub(r"^segments\.\d+\.", "", loc)  # a segment's field is allowed what the request's is
    if key in ALLOWED:
        message = f"{message}; allowed: {ALLOWED[key]}"
    elif key.startswith("speakers.") and key.count(".") == 1:
        message = f"{message}; allowed: a library voice name, or an object with one of {_field_names(SpeakerVoice)}"
    return f"{loc}: {message}"


def describe_problems(problems: list[str]) -> str:
    """``invalid input: a; b; ...``: at most ``limits.ERROR_PROBLEMS_SHOWN`` problems, the rest counted."""
    shown = problems[: limits.ERROR_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    tail = f"; and {more:,} more problem{'s' if more > 1 else ''} not shown" if more else ""
    return "invalid input: " + "; ".join(shown) + tail


def describe_validation_error(error: ValidationError, root: type[BaseModel] = SynthesisRequest) -> str:
    """One entry per problem: ``field.path: what was wrong (got value)``, bounded in length."""
    return describe_problems([_describe_error(item, root) for item in error.errors()])


def find_lone_surrogate(payload: object) -> str | None:
    """Where the first lone surrogate (half of a UTF-16 pair, e.g. from JSON's ``"\\ud800"``) is, in any string or key.

    Python holds such strings, but no tokenizer, log line or UTF-8 encoder can take them.
    """
    stack: list[tuple[str, object]] = [("input", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _SURROGATE.search(value)
            if found:
                return (
                    f"{path}: contains a lone surrogate U+{ord(found.group()):04X} at character {found.start()}; "
                    "text must be valid Unicode (send the character itself, or both halves of its surrogate pair)"
                )
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                stack.append((_child(path, key), item))
                stack.append((f"{path} (a field name)", key))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))
    return None


def _child(path: str, key: object) -> str:
    return field_label(key) if path == "input" else f"{path}.{field_label(key)}"


def parse_request(payload: Any, *, max_text_chars: int = limits.DEFAULT_MAX_TEXT_CHARS) -> SynthesisRequest:
    """Validate a job's ``input``; raise RequestError with a readable, bounded message."""
    if not isinstance(payload, dict):
        raise RequestError(f"invalid input: expected a JSON object, got {type(payload).__name__}")
    surrogate = find_lone_surrogate(payload)
    if surrogate:
        raise RequestError(f"invalid input: {surrogate}")
    try:
        return SynthesisRequest.model_validate(payload, context={"max_text_chars": max_text_chars})
    except ValidationError as error:
        raise RequestError(describe_validation_error(error)) from None


def parse_action(payload: dict, model: type[ActionRequest]) -> ActionRequest:
    """Validate the input of a voice action (``register_voice``, ``delete_voice``) like a request."""
    surrogate = find_lone_surrogate(payload)
    if surrogate:
        raise RequestError(f"invalid input: {surrogate}")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise RequestError(describe_validation_error(error, model)) from None


ActionRequest = TypeVar("ActionRequest", RegisterVoiceRequest, DeleteVoiceRequest)
