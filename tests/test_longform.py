"""Long-form splitting (paragraphs, sentences, scripts) and the crossfaded join."""

from __future__ import annotations

import itertools
from decimal import Decimal

import numpy as np
import pytest

from vv_worker import longform
from vv_worker.longform import CHUNK_MAX_CHARS, crossfade_join, split_text
from vv_worker.pauses import Pause
from vv_worker.prompt import parse_script

SENTENCES = [
    "The rain had stopped by the time the train reached the coast.",
    "Nobody on the platform seemed to notice the stranger with the violin case!",
    "Was he a musician, or something else entirely?",
    "The station master, who had seen everything in thirty years, looked twice.",
]


def chapter(paragraphs: int, sentences_per_paragraph: int = 6) -> str:
    cycle = itertools.cycle(SENTENCES)
    return "\n\n".join(" ".join(next(cycle) for _ in range(sentences_per_paragraph)) for _ in range(paragraphs))


def test_a_short_text_is_one_chunk_unchanged():
    assert split_text("Hello there.") == ["Hello there."]
    script = "Speaker 1: Hi.\nSpeaker 2: Hello."
    assert split_text(script) == [script]


def test_paragraphs_are_kept_whole_when_they_fit():
    first, second = SENTENCES[0] * 5, SENTENCES[1] * 4  # each fits, together they do not
    assert len(first) < CHUNK_MAX_CHARS < len(first) + len(second)
    assert split_text(f"{first}\n\n{second}") == [first, second]


def test_a_long_paragraph_is_cut_at_sentence_ends():
    text = chapter(1, sentences_per_paragraph=40)
    chunks = split_text(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= CHUNK_MAX_CHARS
        assert chunk.endswith(tuple(s[-1] for s in SENTENCES)) and chunk.split(" ")[0][0].isupper()
    assert " ".join(chunks) == text  # nothing dropped, nothing reordered


def test_a_twenty_minute_chapter_splits_into_bounded_chunks_keeping_every_word():
    text = chapter(60)  # about 18 000 characters: 20 minutes at 15 characters a second
    assert len(text) > 18_000
    chunks = split_text(text)
    assert all(0 < len(chunk) <= CHUNK_MAX_CHARS for chunk in chunks)
    assert " ".join(chunks).split() == text.split()
    # greedy packing: no two neighbours would have fitted in one chunk
    assert all(len(a) + 2 + len(b) > CHUNK_MAX_CHARS for a, b in itertools.pairwise(chunks))


def test_clauses_then_spaces_then_characters_when_nothing_coarser_fits():
    clauses = ", ".join(["a clause of some words"] * 12)  # one sentence, 286 characters
    chunks = split_text(clauses, limit=100)
    assert all(len(c) <= 100 and c.endswith((",", "words")) for c in chunks)
    assert " ".join(chunks) == clauses
    words = " ".join(["word"] * 60)
    chunks = split_text(words, limit=50)
    assert all(len(c) <= 50 for c in chunks) and " ".join(chunks) == words
    run = "x" * 250
    assert split_text(run, limit=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_cjk_sentences_are_cut_at_their_full_stops():
    sentence = "今天天气很好，我们去公园散步吧。"
    chunks = split_text(sentence * 10, limit=50)
    assert all(len(c) <= 50 and c.endswith("。") for c in chunks)
    assert "".join(chunks).replace(" ", "") == sentence * 10


def spoken(text: str) -> list[tuple[int, str]]:
    """(speaker number, word) for every word of a script, as the prompt would see it."""
    script = parse_script(text)
    return [(script.speaker_numbers[line.speaker], word) for line in script.lines for word in line.text.split()]


def test_scripts_split_between_turns_and_long_turns_keep_their_label():
    long_turn = " ".join(SENTENCES * 6)
    text = f"Speaker 1: Hello.\nSpeaker 3: {long_turn}\nmore of it on a second row.\nSpeaker 1: Bye."
    chunks = split_text(text)
    assert len(chunks) > 2
    for chunk in chunks:
        assert len(chunk) <= CHUNK_MAX_CHARS
        parse_script(chunk)  # every chunk is a valid script on its own
        assert all(row.startswith(("Speaker 1: ", "Speaker 3: ")) for row in chunk.split("\n") if row)
    # the same speakers say the same words in the same order
    assert [pair for chunk in chunks for pair in spoken(chunk)] == spoken(text)


def test_a_script_that_does_not_start_with_a_label_is_refused():
    with pytest.raises(ValueError, match="must start with a 'Speaker N:' line"):
        split_text("Hello.\nSpeaker 1: Hi.")


def test_crossfade_length_and_equal_power():
    rate = 24000
    overlap = round(longform.CROSSFADE_SECONDS * rate)
    a, b = np.ones(5000, np.float32), np.zeros(7000, np.float32)
    out = crossfade_join([a, b], rate)
    assert out.size == 12000 - overlap
    fade_out = out[5000 - overlap : 5000]
    fade_in = crossfade_join([b[:5000], np.ones(7000, np.float32)], rate)[5000 - overlap : 5000]
    np.testing.assert_allclose(fade_out**2 + fade_in**2, 1.0, atol=1e-6)  # equal power at every sample
    assert np.all(np.diff(fade_out) < 0) and np.all(np.diff(fade_in) > 0)
    np.testing.assert_array_equal(out[: 5000 - overlap], 1.0)
    np.testing.assert_array_equal(out[5000:], 0.0)


def test_crossfade_of_several_pieces_and_short_ones():
    rate = 24000
    overlap = round(longform.CROSSFADE_SECONDS * rate)
    pieces = [np.full(n, i + 1, np.float32) for i, n in enumerate((3000, 500, 4000, 0, 2000))]
    out = crossfade_join(pieces, rate)
    # the 500-sample piece is shorter than the overlap: both its joins overlap by 500 only; the empty one is skipped
    assert out.size == 3000 + 500 + 4000 + 2000 - 500 - 500 - overlap
    assert out[0] == 1 and out[-1] == 5
    assert crossfade_join([], rate).size == 0
    np.testing.assert_array_equal(crossfade_join([pieces[0]], rate), pieces[0])


def test_layout_splits_at_pauses_then_into_chunks():
    long_paragraph = chapter(1, sentences_per_paragraph=20)
    text = f"Speaker 1: Opening. [pause 2s] {long_paragraph}\nSpeaker 2: Reply. [pause 500ms]\nSpeaker 1: End."
    timeline, left_out = longform.layout(text)
    assert left_out == []
    kinds = ["pause" if isinstance(item, Pause) else "chunk" for item in timeline]
    assert kinds[:2] == ["chunk", "pause"] and kinds[-2:] == ["pause", "chunk"] and kinds.count("pause") == 2
    chunks = [item for item in timeline if isinstance(item, str)]
    assert len(chunks) > 3 and all(len(c) <= CHUNK_MAX_CHARS for c in chunks)
    said = [pair for chunk in chunks for pair in spoken(chunk)]
    assert said == spoken(text.replace("[pause 2s] ", "").replace(" [pause 500ms]", ""))
    assert [item.seconds for item in timeline if isinstance(item, Pause)] == [2, Decimal("0.5")]


@pytest.mark.parametrize("rate", [24000, 44100])
def test_assemble_crossfades_runs_and_keeps_pauses_exact_at_the_output_rate(rate):
    import soxr

    rng = np.random.default_rng(1)
    a, b, c = (rng.uniform(0.2, 0.4, n).astype(np.float32) for n in (24000, 12000, 18000))
    pause = Pause(Decimal("0.75"))
    out = longform.assemble([a, b, pause, c], rate, render=lambda s: soxr.resample(s, 24000, rate))
    overlap = round(longform.CROSSFADE_SECONDS * 24000)
    run = soxr.resample(crossfade_join([a, b], 24000), 24000, rate)
    assert run.size == round((a.size + b.size - overlap) * rate / 24000)
    silence = round(0.75 * rate)
    assert out.size == run.size + silence + soxr.resample(c, 24000, rate).size
    np.testing.assert_array_equal(out[: run.size], run)
    assert not out[run.size : run.size + silence].any() and out[run.size + silence] != 0
