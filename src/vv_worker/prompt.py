"""Text and voices -> the conversation the checkpoint's chat template turns into a prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScriptLine:
    """One line of speech: which speaker says what."""

    speaker: int
    text: str


_WHITESPACE = re.compile(r"\s+")


def single_speaker_script(text: str) -> list[ScriptLine]:
    """Plain text is one speaker. Line breaks become spaces: a prompt line must stay one line."""
    return [ScriptLine(speaker=0, text=_WHITESPACE.sub(" ", text).strip())]


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
