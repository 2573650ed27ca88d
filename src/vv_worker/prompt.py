"""Text and voices -> the conversation the checkpoint's chat template turns into a prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_SPEAKERS = 4  # VibeVoice's limit
PROMPT_MARKERS = ("Speech output:", "Voice input:", "Text input:")

_SPEAKER_LINE = re.compile(r"^\s*Speaker\s+(\d{1,3})\s*:\s*(.*)$", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class ScriptError(ValueError):
    """The text cannot be turned into a prompt; the message says why."""


@dataclass(frozen=True)
class ScriptLine:
    """One line of speech: which prompt speaker (0-based) says what."""

    speaker: int
    text: str


@dataclass(frozen=True)
class Script:
    lines: list[ScriptLine]
    speaker_numbers: list[int]  # prompt speaker i is "Speaker speaker_numbers[i]" in the user's text
    is_dialogue: bool  # True when the text was a "Speaker N:" script


def _fold(text: str) -> str:
    """A prompt line must stay one line: line breaks and runs of whitespace become one space."""
    return _WHITESPACE.sub(" ", text).strip()


def _reject_markers(text: str) -> None:
    """Checked on the folded text: 'Speech\noutput:' becomes 'Speech output:' in the prompt."""
    lowered = _fold(text).lower()
    for marker in PROMPT_MARKERS:
        if marker.lower() in lowered:
            raise ScriptError(
                f"text: contains {marker!r}, a section marker of the model's prompt; "
                "remove or reword it so it cannot change the prompt's structure"
            )


def single_speaker_script(text: str) -> list[ScriptLine]:
    """Plain text is one speaker."""
    return [ScriptLine(speaker=0, text=_fold(text))]


def parse_script(text: str) -> Script:
    """Plain text (one speaker) or a VibeVoice script of ``Speaker N: ...`` lines.

    A line that does not start with ``Speaker N:`` continues the previous speaker's line.
    Speakers are renumbered 0, 1, ... in ascending order of N, as the model expects.
    """
    _reject_markers(text)
    rows = [row for row in text.split("\n") if row.strip()]
    matches = [_SPEAKER_LINE.match(row) for row in rows]
    if not any(matches):
        return Script(lines=single_speaker_script(text), speaker_numbers=[0], is_dialogue=False)
    if matches[0] is None:
        raise ScriptError("text: a script must start with a 'Speaker N:' line (the first line has no speaker)")

    spoken: list[tuple[int, str]] = []
    for number, (row, match) in enumerate(zip(rows, matches, strict=True), start=1):
        if match:
            spoken.append((int(match.group(1)), match.group(2)))
        else:
            speaker, said = spoken[-1]
            spoken[-1] = (speaker, f"{said} {row}")
        if match and not match.group(2).strip() and (number == len(rows) or matches[number] is not None):
            raise ScriptError(f"text: line {number} ('{row.strip()}') has a speaker but nothing to say")

    numbers = sorted({speaker for speaker, _ in spoken})
    if len(numbers) > MAX_SPEAKERS:
        raise ScriptError(
            f"text: the script has {len(numbers)} distinct speakers ({', '.join(map(str, numbers))}); "
            f"VibeVoice supports at most {MAX_SPEAKERS}"
        )
    index = {number: i for i, number in enumerate(numbers)}
    lines = [ScriptLine(speaker=index[speaker], text=_fold(said)) for speaker, said in spoken]
    return Script(lines=lines, speaker_numbers=numbers, is_dialogue=True)


def build_conversation(script: list[ScriptLine], voices: dict[int, np.ndarray]) -> list[dict]:
    """Messages in the layout VibeVoice chat templates expect.

    Each speaker's voice sample (float32, 24 kHz) rides on that speaker's first line, so the
    template's voice section and the processor's audio list come out in the same order.
    """
    messages = []
    voiced: set[int] = set()
    for line in script:
        content: list[dict] = [{"type": "text", "text": line.text}]
        if line.speaker in voices and line.speaker not in voiced:
            content.append({"type": "audio", "audio": voices[line.speaker]})
            voiced.add(line.speaker)
        messages.append({"role": str(line.speaker), "content": content})
    return messages


def voice_order(script: list[ScriptLine], voices: dict[int, np.ndarray]) -> list[int]:
    """Speakers in the order their voices appear in the prompt (and in the processor's audio batch)."""
    order: list[int] = []
    for line in script:
        if line.speaker in voices and line.speaker not in order:
            order.append(line.speaker)
    return order
