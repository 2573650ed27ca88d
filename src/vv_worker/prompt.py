"""Text and voices -> the conversation the checkpoint's chat template turns into a prompt.

Follows the original VibeVoice processor (``vibevoice/processor/vibevoice_processor.py``):
one prompt line per line of text, speakers renumbered from 0 in ascending order, and the
voice section listing voices in ascending speaker order whoever speaks first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .limits import SPEAKER_NUMBER_DIGITS

MAX_SPEAKERS = 4  # VibeVoice's limit
PROMPT_MARKERS = ("Speech output:", "Voice input:", "Text input:")

# "Speaker N:" as the original parses it (any case, any digits), also without the space ("Speaker1:")
_LABEL = r"speaker\s*(\d+)\s*:"
_SPEAKER_LINE = re.compile(rf"^\s*{_LABEL}\s*(.*)$", re.IGNORECASE)
# not glued to a preceding letter ("loudspeaker 2:"), except the n of a literal backslash-n
_LABEL_ANYWHERE = re.compile(rf"(?:(?<=\\n)|(?<![^\W\d_])){_LABEL}", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_LITERAL_NEWLINE = "\\n"  # a backslash and an n: what typing \n inside shell quotes gives


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
    """A prompt line must stay one line: runs of whitespace become one space."""
    return _WHITESPACE.sub(" ", text).strip()


def _rows(text: str) -> list[str]:
    """The text's non-empty lines (any Unicode line break), each folded to single spaces."""
    return [row for row in (_fold(line) for line in text.splitlines()) if row]


def _reject_markers(text: str) -> None:
    """Checked on the whole text folded: 'Speech\\noutput:' must not slip through as two lines."""
    lowered = _fold(text).lower()
    for marker in PROMPT_MARKERS:
        if marker.lower() in lowered:
            raise ScriptError(
                f"text: contains {marker!r}, a section marker of the model's prompt; "
                "remove or reword it so it cannot change the prompt's structure"
            )


def _reject_inner_labels(number: int, row: str, start: int) -> None:
    """A 'Speaker N:' label after the start of a line would be read aloud: refuse it with a hint.

    ``start`` is where the line's own label (if any) ends; labels before it are the line's own.
    """
    found = _LABEL_ANYWHERE.search(row, start)
    if found is None:
        return
    label = found.group(0)
    before = row[: found.start()].rstrip()
    if before.endswith(_LITERAL_NEWLINE):
        why = (
            f"it follows a literal backslash-n ('{_LITERAL_NEWLINE}', two characters, not a line break: "
            "shells pass \\n inside quotes unchanged)"
        )
    else:
        why = "it is in the middle of the line"
    raise ScriptError(
        f"text: line {number} has the speaker label {label!r} where it would be read aloud: {why}. "
        "Each 'Speaker N:' label must start its own line: use real line breaks (bash: "
        "--text $'Speaker 0: Hi.\\nSpeaker 1: Hello.', JSON: a \\n escape). If the words are meant to be "
        "spoken, reword them (e.g. 'speaker number 1')"
    )


def single_speaker_script(text: str) -> list[ScriptLine]:
    """Plain text is Speaker 0, one prompt line per line of text (as the original reads a text file)."""
    return [ScriptLine(speaker=0, text=row) for row in _rows(text)]


def parse_script(text: str) -> Script:
    """Plain text (one speaker) or a VibeVoice script of ``Speaker N: ...`` lines.

    Every line of text is one prompt line. In a script, a line that does not start with
    ``Speaker N:`` is another line of the previous speaker. Speakers are renumbered 0, 1, ...
    in ascending order of N, as the model expects. A label anywhere but at the start of a line
    is refused (see :func:`_reject_inner_labels`), so a label is never read aloud.
    """
    _reject_markers(text)
    rows = _rows(text)
    matches = [_SPEAKER_LINE.match(row) for row in rows]
    for number, (row, match) in enumerate(zip(rows, matches, strict=True), start=1):
        _reject_inner_labels(number, row, match.start(2) if match else 0)
    if not any(matches):
        return Script(lines=[ScriptLine(0, row) for row in rows], speaker_numbers=[0], is_dialogue=False)
    if matches[0] is None:
        raise ScriptError("text: a script must start with a 'Speaker N:' line (the first line has no speaker)")

    spoken: list[tuple[int, str]] = []
    for number, (row, match) in enumerate(zip(rows, matches, strict=True), start=1):
        if match is None:  # another line of the previous speaker; fills a bare "Speaker N:" line above it
            speaker, said = spoken[-1]
            if said:
                spoken.append((speaker, row))
            else:
                spoken[-1] = (speaker, row)
            continue
        said, speaker = match.group(2).strip(), int(match.group(1))
        if speaker >= 10**SPEAKER_NUMBER_DIGITS:
            raise ScriptError(
                f"text: line {number}: Speaker {speaker}: speaker numbers go from 0 to {10**SPEAKER_NUMBER_DIGITS - 1}"
            )
        if not said and (number == len(rows) or matches[number] is not None):
            raise ScriptError(f"text: line {number} ('{row}') has a speaker but nothing to say")
        spoken.append((speaker, said))

    numbers = sorted({speaker for speaker, _ in spoken})
    if len(numbers) > MAX_SPEAKERS:
        raise ScriptError(
            f"text: the script has {len(numbers)} distinct speakers ({', '.join(map(str, numbers))}); "
            f"VibeVoice supports at most {MAX_SPEAKERS}"
        )
    index = {number: i for i, number in enumerate(numbers)}
    lines = [ScriptLine(speaker=index[speaker], text=said) for speaker, said in spoken]
    return Script(lines=lines, speaker_numbers=numbers, is_dialogue=True)


def voice_order(script: list[ScriptLine], voices: dict[int, np.ndarray]) -> list[int]:
    """Speakers in the order their voices appear in the prompt and the processor's audio batch: ascending."""
    spoken = {line.speaker for line in script}
    return sorted(speaker for speaker in voices if speaker in spoken)


def build_conversation(script: list[ScriptLine], voices: dict[int, np.ndarray]) -> list[dict]:
    """Messages in the layout VibeVoice chat templates expect, voices in ascending speaker order.

    The templates (the released checkpoints' and the tiny test model's) list a speaker in the voice
    section when it first appears on a message holding audio, and the processor collects the audio
    in message order. So each voice (float32, 24 kHz) gets an audio-only message of its own, in
    ascending speaker order, before the text lines: the voice section and the audio list then
    agree and are ascending even when a higher-numbered speaker speaks first. Audio-only messages
    render no text line.
    """
    messages: list[dict] = [
        {"role": str(speaker), "content": [{"type": "audio", "audio": voices[speaker]}]}
        for speaker in voice_order(script, voices)
    ]
    messages += [{"role": str(line.speaker), "content": [{"type": "text", "text": line.text}]} for line in script]
    return messages
