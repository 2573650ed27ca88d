"""Long texts in chunks: split at paragraph, then sentence boundaries; audio joined with short crossfades.

A chunk is at most ``CHUNK_MAX_CHARS`` characters, labels included: about 40 s of speech, well within what
one VibeVoice generation does well, and a bound on each generation's memory (its KV cache grows with the
prompt and the audio). A text is split at the coarsest boundary that makes its pieces fit: paragraphs (blank
lines), then sentences, then clauses (``,`` ``;`` ``:`` and dashes), then spaces; only a run of more than
``CHUNK_MAX_CHARS`` characters without any space is cut inside a word. Pieces are then packed greedily, in
order, into chunks that fit. Nothing is dropped or reordered: the chunks hold every word of the text.

A ``Speaker N:`` script is split between turns; a turn too long for one chunk is split inside its text and
every piece keeps its label, so every chunk is a valid script and each speaker keeps its voice. A label is
never split.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable

import numpy as np

from .audio import MODEL_SAMPLE_RATE
from .pauses import Pause
from .pauses import join as join_pauses
from .pauses import split as split_pauses
from .prompt import _SPEAKER_LINE as SPEAKER_LINE

CHUNK_MAX_CHARS = 600
CROSSFADE_SECONDS = 0.05  # equal-power crossfade between consecutive chunks of one text

_PARAGRAPH = re.compile(r"\n\s*\n")
# each pattern matches the end of a unit; the text is cut right after every match
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+[」』）]*")
_CLAUSE_END = re.compile(r"[,;:]+(?=\s)|\s[—–-]+(?=\s)|[，；、：]")
_SPACE = re.compile(r"(?<=\S)(?=\s)")


def _cut_after(text: str, pattern: re.Pattern[str]) -> list[str]:
    pieces, start = [], 0
    for match in pattern.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def _pack(pieces: list[str], limit: int, separator: str) -> list[str]:
    """Join consecutive pieces with ``separator`` while the result stays within ``limit``."""
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(separator) + len(piece) <= limit:
            packed[-1] = f"{packed[-1]}{separator}{piece}"
        else:
            packed.append(piece)
    return packed


# (how a text is cut into units at each level, the separator that packs them back together)
_LEVELS: list[tuple[re.Pattern[str], str]] = [
    (_PARAGRAPH, "\n\n"),
    (_SENTENCE_END, " "),
    (_CLAUSE_END, " "),
    (_SPACE, " "),
]


def split_plain(text: str, limit: int = CHUNK_MAX_CHARS, level: int = 0) -> list[str]:
    """Plain text -> pieces of at most ``limit`` characters, cut at the coarsest boundary that makes them fit."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    if level == len(_LEVELS):  # no space left to cut at: cut the word
        return [text[i : i + limit] for i in range(0, len(text), limit)]
    pattern, separator = _LEVELS[level]
    if pattern is _PARAGRAPH:
        units = [unit.strip() for unit in pattern.split(text) if unit.strip()]
    else:
        units = _cut_after(text, pattern)
    pieces = [piece for unit in units for piece in split_plain(unit, limit, level + 1)]
    return _pack(pieces, limit, separator)


def _turns(text: str) -> list[tuple[str, str]]:
    """A script's (label, what is said) turns; rows without a label continue the turn before them."""
    turns: list[tuple[str, str]] = []
    for row in text.split("\n"):
        match = SPEAKER_LINE.match(row)
        if match:
            turns.append((f"Speaker {match.group(1)}:", match.group(2)))
        elif turns:
            label, said = turns[-1]
            turns[-1] = (label, f"{said}\n{row}")
        elif row.strip():
            raise ValueError("text: a script must start with a 'Speaker N:' line (the first line has no speaker)")
    return turns


def is_script(text: str) -> bool:
    return any(SPEAKER_LINE.match(row) for row in text.split("\n"))


def split_text(text: str, limit: int = CHUNK_MAX_CHARS) -> list[str]:
    """A text (plain or a ``Speaker N:`` script) -> chunks of at most ``limit`` characters, each a valid text."""
    if not is_script(text):
        return split_plain(text, limit)
    pieces: list[str] = []
    for label, said in _turns(text):
        budget = limit - len(label) - 1
        pieces.extend(f"{label} {piece}" for piece in split_plain(said, budget))
    return _pack(pieces, limit, "\n")


def crossfade_join(pieces: list[np.ndarray], rate: int, seconds: float = CROSSFADE_SECONDS) -> np.ndarray:
    """Consecutive audio pieces overlapped by ``seconds`` with an equal-power (sine/cosine) crossfade.

    The result is ``sum(lengths) - overlaps`` samples long; an overlap is shortened when a piece is shorter.
    """
    pieces = [np.asarray(piece, dtype=np.float32) for piece in pieces if piece.size]
    if not pieces:
        return np.zeros(0, np.float32)
    wanted = round(seconds * rate)
    overlaps = [min(wanted, a.size, b.size) for a, b in itertools.pairwise(pieces)]
    out = np.empty(sum(piece.size for piece in pieces) - sum(overlaps), np.float32)
    out[: pieces[0].size] = pieces[0]
    end = pieces[0].size
    for piece, overlap in zip(pieces[1:], overlaps, strict=True):
        start = end - overlap
        if overlap:
            t = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap * (math.pi / 2)
            out[start:end] = out[start:end] * np.cos(t) + piece[:overlap] * np.sin(t)
        out[end : start + piece.size] = piece[overlap:]
        end = start + piece.size
    return out


def layout(text: str, field: str = "text", limit: int = CHUNK_MAX_CHARS) -> tuple[list[str | Pause], list[str]]:
    """A text -> its timeline: chunks to generate and pauses, in order; plus the pieces with nothing to say.

    Pause tags split the text first (``pauses.split``), then every piece longer than ``limit`` is split into
    chunks. Raises ``PauseError`` for a bad tag.
    """
    items, left_out = split_pauses(text, field)
    timeline: list[str | Pause] = []
    for item in items:
        timeline.extend([item] if isinstance(item, Pause) else split_text(item, limit))
    return timeline, left_out


def assemble(
    timeline: list[np.ndarray | Pause], rate: int, render: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Generated chunks (24 kHz) and pauses -> one signal at ``rate``.

    Consecutive chunks are crossfaded into a run; each run goes through ``render`` (speed, trimming,
    resampling to ``rate``: whatever changes the speech), then runs and pauses are joined with the pauses
    made at ``rate``, so they are exact there (``pauses.join``).
    """
    render = render or (lambda samples: samples)
    pieces: list[np.ndarray | Pause] = []
    run: list[np.ndarray] = []
    for item in [*timeline, None]:
        if isinstance(item, np.ndarray):
            run.append(item)
            continue
        if run:
            pieces.append(render(crossfade_join(run, MODEL_SAMPLE_RATE)))
            run = []
        if item is not None:
            pieces.append(item)
    return join_pauses(pieces, rate)
