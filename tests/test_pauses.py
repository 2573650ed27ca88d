"""Pause tags: parsing, limits, refusals with tag and position, exact silence at any rate."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import soxr

from vv_worker import pauses
from vv_worker.pauses import Pause, PauseError


@pytest.mark.parametrize(
    ("tag", "seconds"),
    [
        ("[pause 500ms]", "0.5"),
        ("[pause 1.5s]", "1.5"),
        ("[PAUSE 2S]", "2"),
        ("[ pause   250 ms ]", "0.25"),
        ("[pause .75s]", "0.75"),
        ("[pause2s]", "2"),
        ('<break time="500ms"/>', "0.5"),
        ("<break time='1.25s' />", "1.25"),
        ('<BREAK TIME="3s">', "3"),
        ("[pause 10s]", "10"),
    ],
)
def test_valid_tags_become_pauses_of_that_length(tag, seconds):
    items, left_out = pauses.split(f"Before {tag} after.")
    assert items == ["Before", Pause(Decimal(seconds), position=8), "after."]
    assert left_out == []


def test_text_without_tags_is_one_piece_and_other_markup_is_text():
    text = "a < b and [note] <breakfast> <b>bold</b>"
    assert pauses.split(text) == ([text], [])


@pytest.mark.parametrize(
    ("text", "tag", "position", "reason"),
    [
        ("Hi [pause 5 parsecs] there", "[pause 5 parsecs]", 4, "unknown unit 'parsecs'"),
        ("Hi [pause -1s]", "[pause -1s]", 4, "cannot be negative"),
        ("Hi there [pause", "[pause", 10, "not closed with ']'"),
        ("[pause 1s\n] more", "[pause 1s", 1, "not closed with ']'"),
        ("a [pause 1s [pause 2s]", "[pause 1s", 3, "not closed"),
        ("[pause] x", "[pause]", 1, "no duration"),
        ("x [pause 0ms]", "[pause 0ms]", 3, "longer than 0 s"),
        ("x [pause 10.001s]", "[pause 10.001s]", 3, "10.001 s is longer than one pause may be"),
        ("x [pause 1e3s]", "[pause 1e3s]", 3, "'1e3s' is not a duration"),
        ("x [pause 1.2.3s]", "[pause 1.2.3s]", 3, "is not a duration"),
        ("x [pauses 1s]", "[pauses 1s]", 3, "is not a duration"),
        ("x [pause 1 s 2 s]", "[pause 1 s 2 s]", 3, "is not a duration"),
        ('x <break strength="weak"/>', '<break strength="weak"/>', 3, "one attribute"),
        ('x <break time="1s" strength="x"/>', '<break time="1s" strength="x"/>', 3, "one attribute"),
        ('x <break time="1 parsec"/>', '<break time="1 parsec"/>', 3, "unknown unit"),
        ('x <break time="1s"', '<break time="1s"', 3, "not closed with '>'"),
        ("x [pause " + "9" * 80 + "s]", "[pause " + "9" * 54 + "...", 3, "not closed"),
    ],
)
def test_bad_tags_are_refused_with_the_tag_and_its_position(text, tag, position, reason):
    with pytest.raises(PauseError) as caught:
        pauses.split(text, field="segments.1.text")
    message = str(caught.value)
    assert message.startswith(f"segments.1.text: pause tag {tag!r} at character {position}: ")
    assert reason in message
    assert "allowed: [pause 500ms], [pause 1.5s]" in message


def test_count_and_total_limits():
    at_limit = " ".join(["word [pause 1ms]"] * pauses.MAX_PAUSES)
    assert len(pauses.find_pauses(at_limit)) == pauses.MAX_PAUSES
    with pytest.raises(PauseError, match=f"more than {pauses.MAX_PAUSES} pause tags"):
        pauses.find_pauses(at_limit + " [pause 1ms]")
    tags = int(pauses.MAX_TOTAL_PAUSE_SECONDS / pauses.MAX_PAUSE_SECONDS)
    full = " ".join(["word [pause 10s]"] * tags)
    assert sum(p.seconds for _, _, p in pauses.find_pauses(full)) == pauses.MAX_TOTAL_PAUSE_SECONDS
    with pytest.raises(PauseError, match="add up to more than 300 s") as caught:
        pauses.find_pauses(full + " [pause 1ms]")
    assert f"at character {len(full) + 2}" in str(caught.value)


def test_scripts_keep_the_speaker_across_a_pause():
    text = "Speaker 1: Hi [pause 1s] there.\nSpeaker 2: Yes. [pause 2s]\nSpeaker 1: Good [pause 300ms]."
    items, left_out = pauses.split(text)
    assert items == [
        "Speaker 1: Hi",
        Pause(Decimal(1), 15),
        "Speaker 1: there.\nSpeaker 2: Yes.",
        Pause(Decimal(2), 49),
        "Speaker 1: Good",
        Pause(Decimal("0.3"), 76),
    ]
    assert left_out == ["Speaker 1: ."]  # only punctuation after the last tag: nothing to say
    # a label with nothing before a tag is not text that was left out
    assert pauses.split("Speaker 1: [pause 1s] Hi.") == ([Pause(Decimal(1), 12), "Speaker 1: Hi."], [])


def test_no_tag_text_survives_in_the_pieces():
    text = "One [pause 1s] two <break time='2s'/> three [PAUSE 3S] four"
    items, _ = pauses.split(text)
    spoken = " ".join(item for item in items if isinstance(item, str))
    assert spoken == "One two three four"


@pytest.mark.parametrize(
    ("seconds", "rate", "samples"),
    [
        ("0.5", 24000, 12000),
        ("1.5", 24000, 36000),
        ("1.5", 44100, 66150),
        ("0.001", 44100, 44),  # 44.1 rounds down
        ("0.0000625", 24000, 2),  # 1.5 samples: ties go to even
        ("0.0001875", 24000, 4),  # 4.5 samples: ties go to even
        ("10", 48000, 480000),
    ],
)
def test_silence_is_exact_to_the_sample(seconds, rate, samples):
    assert pauses.silence_samples(Decimal(seconds), rate) == samples
    assert Pause(Decimal(seconds)).samples(rate) == samples


@pytest.mark.parametrize("rate", [24000, 44100, 48000, 8000])
def test_pauses_stay_exact_after_resampling(rate):
    """Speech is resampled piece by piece and the silence made at the output rate, so it is exact there too."""
    rng = np.random.default_rng(0)
    speech = [rng.uniform(0.1, 0.5, 24000 + 777 * i).astype(np.float32) for i in range(3)]
    items, _ = pauses.split("one [pause 1.234s] two [pause 250ms] three")
    resampled = iter([soxr.resample(piece, 24000, rate) for piece in speech])
    timeline = [item if isinstance(item, Pause) else next(resampled) for item in items]
    out = pauses.join(timeline, rate)
    lengths = [t.size if isinstance(t, np.ndarray) else t.samples(rate) for t in timeline]
    assert out.size == sum(lengths)
    first, gap1, second, gap2 = np.cumsum(lengths)[:4]
    assert gap1 - first == round(1.234 * rate) and not out[first:gap1].any()
    assert gap2 - second == round(0.25 * rate) and not out[second:gap2].any()
    # the speech next to each pause is untouched
    assert out[first - 1] != 0 and out[gap1] != 0


def test_join_of_nothing_is_empty():
    assert pauses.join([], 24000).size == 0


def test_only_pieces_between_tags_can_be_left_out_and_symbols_are_speech():
    assert pauses.split("...") == (["..."], [])  # no tags: the text is generated as it is
    assert pauses.split("\U0001f600\U0001f600") == (["\U0001f600\U0001f600"], [])
    assert pauses.split("\U0001f600 [pause 1s] !?") == (["\U0001f600", Pause(Decimal(1), 3)], ["!?"])
    assert pauses.speakable("100 %") and pauses.speakable("€") and not pauses.speakable("Speaker 2: ¡…!")
