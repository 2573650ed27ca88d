"""Each bound a request or a setting shares, declared once, and the tables of audio formats.

``config.py`` (settings), ``schema.py`` (requests), ``audio.py`` (decode and encode), the CLI and the
docs take their ranges and format lists from here; ``tests/test_limits.py`` checks the docs against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field


@dataclass(frozen=True)
class Bound:
    """A closed numeric range (``low`` excluded when ``low_exclusive``), its pydantic type and its wording."""

    low: float
    high: float
    kind: type = float
    low_exclusive: bool = False

    def annotated(self) -> Any:
        """``Annotated[kind, Field(...)]`` enforcing the range (and finiteness, for floats)."""
        low = {"gt": self.low} if self.low_exclusive else {"ge": self.low}
        extra = {"allow_inf_nan": False} if self.kind is float else {}
        return Annotated[self.kind, Field(**low, le=self.high, **extra)]

    @property
    def allowed(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        low, high = (f"{self.low}", f"{self.high}") if self.kind is int else (f"{self.low:g}", f"{self.high:g}")
        if self.low_exclusive:
            return f"{noun} above {low} and at most {high}"
        return f"{noun} from {low} to {high}"

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_exclusive else value >= self.low
        return above and value <= self.high


# --- request fields (and the settings that give their defaults) -------------------------------------------------
SEED = Bound(0, 2**32 - 1, int)
CFG_SCALE = Bound(1.0, 10.0)
DIFFUSION_STEPS = Bound(1, 50, int)
SPEED = Bound(0.5, 2.0)
TEMPERATURE = Bound(0.0, 2.0, low_exclusive=True)
OUTPUT_SAMPLE_RATE = Bound(8000, 48000, int)
LOUDNESS_LUFS = Bound(-50.0, -5.0)
VOICE_NAME_CHARS = 128
URL_CHARS = 4096
SPEAKER_NUMBER_DIGITS = 3  # the N of "Speaker N:" lines and of ``speakers`` keys: 0 to 999

# --- text -------------------------------------------------------------------------------------------------------
DEFAULT_MAX_TEXT_CHARS = 30_000  # a request's text, or all its segments' texts together: about 33 min of speech
DEFAULT_MAX_TEXT_TOKENS = 36_000  # all the request's text, by the checkpoint's tokenizer; see Settings.max_text_tokens
# pause tags (pauses.py) and chunks (longform.py: CHUNK_MAX_CHARS) declare their own bounds next to their parsers

# --- segments ---------------------------------------------------------------------------------------------------
MAX_SEGMENTS = 50
GAP_SECONDS = Bound(0.0, 10.0)  # silence between segments in the concatenation
DEFAULT_GAP_SECONDS = 0.5

# --- registered voices (voice_store.py) -------------------------------------------------------------------------
REGISTERED_VOICE_DESCRIPTION_CHARS = 200
DEFAULT_MAX_REGISTERED_VOICES = 100  # VV_MAX_REGISTERED_VOICES

# --- reference audio files --------------------------------------------------------------------------------------
REFERENCE_FILE_RATE = Bound(8_000, 192_000, int)  # Hz
REFERENCE_FILE_CHANNELS = 8
REFERENCE_DECODE_SECONDS = 600.0  # decoding stops past this, before trimming
REFERENCE_DECODE_SAMPLES = 30_000_000  # and past this many samples (120 MB as float32), whatever the rate

# --- error messages ---------------------------------------------------------------------------------------------
ERROR_PROBLEMS_SHOWN = 10  # problems listed in one error message; the rest are counted
ERROR_ECHO_CHARS = 60  # characters of a user's value (or field name) quoted in an error


@dataclass(frozen=True)
class OutputFormat:
    container: str  # soundfile's format
    subtype: str  # soundfile's subtype
    mime_type: str
    rates: tuple[int, ...] | None  # sample rates the codec accepts; None: any in OUTPUT_SAMPLE_RATE
    description: str
    extensions: tuple[str, ...]  # file name endings, the usual one first


_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "wav": OutputFormat("WAV", "PCM_16", "audio/wav", None, "WAV, PCM 16-bit", (".wav",)),
    "flac": OutputFormat("FLAC", "PCM_16", "audio/flac", None, "FLAC, 16-bit", (".flac",)),
    "mp3": OutputFormat("MP3", "MPEG_LAYER_III", "audio/mpeg", _MP3_RATES, "MP3", (".mp3",)),
    "ogg": OutputFormat(
        "OGG", "OPUS", "audio/ogg", (8000, 12000, 16000, 24000, 48000), "Ogg Opus", (".ogg", ".opus", ".oga")
    ),
}
OutputFormatName = Literal[tuple(OUTPUT_FORMATS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class InputFormat:
    container: str  # soundfile's format
    subtypes: frozenset[str]  # soundfile's subtypes accepted in that container
    description: str
    exact_length: bool  # the header's frame count is exact, so a file holding fewer frames is truncated


_PCM = frozenset({"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"})
INPUT_FORMATS: tuple[InputFormat, ...] = (
    InputFormat("WAV", _PCM, "WAV (PCM 8/16/24/32-bit, 32/64-bit float)", True),
    InputFormat("WAVEX", _PCM, "WAV (PCM 8/16/24/32-bit, 32/64-bit float)", True),
    InputFormat("FLAC", frozenset({"PCM_16", "PCM_24", "PCM_S8"}), "FLAC", True),
    InputFormat("OGG", frozenset({"VORBIS"}), "OGG Vorbis", False),
    InputFormat("OGG", frozenset({"OPUS"}), "OGG Opus", False),
    InputFormat("MP3", frozenset({"MPEG_LAYER_III"}), "MP3", False),
)
INPUT_FORMATS_TEXT = ", ".join(dict.fromkeys(f.description for f in INPUT_FORMATS))


def input_format(container: str, subtype: str) -> InputFormat | None:
    """The accepted input format a decoded file's header names, or None."""
    for entry in INPUT_FORMATS:
        if entry.container == container and subtype in entry.subtypes:
            return entry
    return None
