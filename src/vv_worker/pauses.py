"""Pause tags in text: ``[pause 500ms]``, ``[pause 1.5s]`` and SSML's ``<break time="500ms"/>``.

Only the SSML ``break`` element is accepted, with a ``time`` attribute and nothing else; no other SSML
(``<speak>``, ``<prosody>``, ...) is interpreted, so any other markup is read as plain text.

A tag becomes exactly that much silence: ``round(seconds x rate)`` zero samples at whatever rate the output
is made at (nearest sample, ties to even), so the pause is exact at 24 kHz and after resampling, because
the speech around it is resampled on its own and the silence is made at the target rate (:func:`join`).
Anything that starts like a tag (``[pause``, ``<break`` as a word) but is not a valid one is refused with
the tag and its 1-based character position in the cleaned text, so a typo is never read aloud.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np

from .prompt import _SPEAKER_LINE as SPEAKER_LINE

MAX_PAUSES = 200  # tags in one text
MAX_PAUSE_SECONDS = Decimal(10)  # one tag
MAX_TOTAL_PAUSE_SECONDS = Decimal(300)  # all tags of one text together
MAX_TAG_CHARS = 64  # a tag's closing bracket must come within this many characters of its start
ALLOWED = '[pause 500ms], [pause 1.5s] or <break time="500ms"/>, more than 0 and at most {max} s'

_START = re.compile(r"\[\s*pause|<\s*break\b", re.IGNORECASE)
_BREAK = re.compile(r"<\s*break\s+time\s*=\s*(?P<q>[\"'])(?P<body>[^\"'<>]*)(?P=q)\s*/?\s*>", re.IGNORECASE)
_DURATION = re.compile(r"(?P<sign>[+-]?)(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[^\W\d]+)")
_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1)}


class PauseError(ValueError):
    """A pause tag is malformed or over a limit; the message names the tag and its position."""


@dataclass(frozen=True)
class Pause:
    """Silence of an exact duration, wherever it was written in the text."""

    seconds: Decimal
    position: int = 0  # 1-based character position of the tag in the text

    def samples(self, rate: int) -> int:
        return silence_samples(self.seconds, rate)


def has_tags(text: str) -> bool:
    """Whether ``text`` holds anything that starts like a pause tag (valid or not)."""
    return _START.search(text) is not None


def silence_samples(seconds: Decimal | float, rate: int) -> int:
    """Samples of ``seconds`` at ``rate``, to the nearest sample (ties to even), computed in decimal."""
    exact = Decimal(str(seconds)) * rate
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def _refuse(field: str, tag: str, position: int, reason: str) -> PauseError:
    shown = tag if len(tag) <= MAX_TAG_CHARS else tag[: MAX_TAG_CHARS - 3] + "..."
    allowed = ALLOWED.format(max=MAX_PAUSE_SECONDS)
    return PauseError(f"{field}: pause tag {shown!r} at character {position}: {reason}; allowed: {allowed}")


def _duration(body: str, field: str, tag: str, position: int) -> Decimal:
    body = body.strip()
    if not body:
        raise _refuse(field, tag, position, "it has no duration")
    match = _DURATION.fullmatch(body)
    if match is None:
        raise _refuse(field, tag, position, f"{body!r} is not a duration")
    unit = match["unit"].lower()
    if unit not in _UNITS:
        raise _refuse(field, tag, position, f"unknown unit {match['unit']!r} (use ms or s)")
    if match["sign"] == "-":
        raise _refuse(field, tag, position, "a pause cannot be negative")
    seconds = Decimal(match["number"]) * _UNITS[unit]
    if seconds <= 0:
        raise _refuse(field, tag, position, "a pause must be longer than 0 s")
    if seconds > MAX_PAUSE_SECONDS:
        raise _refuse(field, tag, position, f"{seconds.normalize():f} s is longer than one pause may be")
    return seconds


def find_pauses(text: str, field: str = "text") -> list[tuple[int, int, Pause]]:
    """Every pause tag of ``text`` as (start, end, pause), checked; raise PauseError on the first bad one.

    ``start`` and ``end`` are 0-based offsets into ``text`` for slicing; ``Pause.position`` is the 1-based
    character number that messages and the response use.
    """
    found: list[tuple[int, int, Pause]] = []
    total = Decimal(0)
    for opener in _START.finditer(text):
        start = opener.start()
        if found and start < found[-1][1]:
            continue  # inside the previous tag
        position = start + 1
        bracket = opener.group().startswith("[")
        closer = "]" if bracket else ">"
        window = text[start : start + MAX_TAG_CHARS]
        end = window.find(closer)
        cuts = [i for i in (window.find("\n"), window.find(opener.group()[0], 1)) if i != -1]
        if end == -1 or (cuts and min(cuts) < end):
            shown = window[: min(cuts, default=len(window))].rstrip()
            if not cuts and len(window) == MAX_TAG_CHARS:
                shown += "..."  # the text goes on: show that it was cut
            raise _refuse(field, shown, position, f"not closed with '{closer}'")
        tag = window[: end + 1]
        if bracket:
            body = tag[opener.end() - start : -1]
        else:
            match = _BREAK.fullmatch(tag)
            if match is None:
                raise _refuse(field, tag, position, 'a break tag takes one attribute, time="..."')
            body = match["body"]
        pause = Pause(_duration(body, field, tag, position), position)
        found.append((start, start + len(tag), pause))
        total += pause.seconds
        if len(found) > MAX_PAUSES:
            raise _refuse(field, tag, position, f"more than {MAX_PAUSES} pause tags in one text")
        if total > MAX_TOTAL_PAUSE_SECONDS:
            raise _refuse(field, tag, position, f"the pauses add up to more than {MAX_TOTAL_PAUSE_SECONDS} s")
    return found


def _said(text: str) -> str:
    """``text`` without its ``Speaker N:`` labels."""
    return "\n".join(m.group(2) if (m := SPEAKER_LINE.match(row)) else row for row in text.split("\n"))


def speakable(text: str) -> bool:
    """Whether ``text`` (labels removed) has anything to say: a character that is not punctuation, a space or a
    control character (letters, digits, symbols such as emoji)."""
    return any(not unicodedata.category(ch).startswith(("P", "Z", "C")) for ch in _said(text))


def split(text: str, field: str = "text") -> tuple[list[str | Pause], list[str]]:
    """Text -> (text pieces and pauses in order, pieces left out); each piece is valid on its own as a text.

    In a ``Speaker N:`` script, a piece that starts inside a speaker's turn gets that speaker's label, so the
    same voice speaks it. Pieces between tags with nothing to say (only punctuation) are left out and returned
    second, so the caller can warn.
    """
    tags = find_pauses(text, field)
    if not tags:
        return [text.strip()], []  # a text without tags is generated as it is
    items: list[str | Pause] = []
    left_out: list[str] = []
    label: str | None = None  # the label of the turn the text has reached
    cursor = 0
    for start, end, pause in [*tags, (len(text), len(text), None)]:
        piece = text[cursor:start].strip()
        if piece:
            if label is not None and not SPEAKER_LINE.match(piece.split("\n", 1)[0]):
                piece = f"{label} {piece}"
            for row in piece.split("\n"):
                if match := SPEAKER_LINE.match(row):
                    label = f"Speaker {match.group(1)}:"
            if speakable(piece):
                items.append(piece)
            elif _said(piece).strip():
                left_out.append(piece)
        if pause is not None:
            items.append(pause)
        cursor = end
    return items, left_out


def join(items: list[np.ndarray | Pause], rate: int) -> np.ndarray:
    """Audio pieces (already at ``rate``) and pauses (made here, at ``rate``) end to end."""
    parts = [np.zeros(item.samples(rate), np.float32) if isinstance(item, Pause) else item for item in items]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
