"""Script parsing and prompt layout, against the original VibeVoice processor's rules."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import speechlike

from vv_worker.engine.base import GenerationJob
from vv_worker.prompt import MAX_SPEAKERS, ScriptError, ScriptLine, build_conversation, parse_script, voice_order
from vv_worker.schema import RequestError


def lines(text: str) -> list[tuple[int, str]]:
    return [(line.speaker, line.text) for line in parse_script(text).lines]


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def render(processor, script: list[ScriptLine], voices: dict[int, np.ndarray]) -> tuple[str, list[int]]:
    """The decoded prompt and the valid length (samples) of each row of the processor's audio batch."""
    batch = processor.apply_chat_template(
        build_conversation(script, voices), tokenize=True, return_dict=True, return_tensors="pt"
    )
    lengths = batch["padding_mask"].sum(dim=-1).tolist() if "padding_mask" in batch else []
    return processor.tokenizer.decode(batch["input_ids"][0]), lengths


# --- voice order -----------------------------------------------------------------------------------------


def test_voices_are_listed_in_ascending_speaker_order_when_a_higher_speaker_speaks_first(processor):
    script = parse_script("Speaker 2: I start.\nSpeaker 1: Then me.\nSpeaker 2: Me again.").lines
    # distinct lengths make each voice recognisable by its placeholder count and its audio row
    voices = {0: speechlike(3 * 3200 / 24000, seed=1), 1: speechlike(6 * 3200 / 24000, seed=2)}
    text, lengths = render(processor, script, voices)
    pad = "<|vision_pad|>"
    voice_section = text.split(" Voice input:\n")[1].split(" Text input:\n")[0]
    assert voice_section == (
        f" Speaker 0:<|vision_start|>{pad * 3}<|vision_end|>\n Speaker 1:<|vision_start|>{pad * 6}<|vision_end|>\n"
    )
    assert lengths == [voices[0].size, voices[1].size]  # the audio list in the same order
    assert voice_order(script, voices) == [0, 1]
    # the text lines keep the script's order
    assert " Text input:\n Speaker 1: I start.\n Speaker 0: Then me.\n Speaker 1: Me again.\n Speech output:" in text


def test_engine_pairs_each_voice_row_with_its_speaker(reference_engine):
    script = parse_script("Speaker 1: First.\nSpeaker 0: Second.").lines
    voices = {0: speechlike(1.0, seed=3), 1: speechlike(2.0, seed=4)}
    prepared = reference_engine.prepare_inputs(GenerationJob(script, voices, 0, 1.3, 10, 1))
    # each row holds that voice's own samples (loudness-normalized by the processor), speaker 0 first
    valid = [length for _, _, length in prepared["voices"]]
    assert valid == [voices[0].size, voices[1].size]
    for (_, values, length), speaker in zip(prepared["voices"], (0, 1), strict=True):
        row = values[0, ..., :length].reshape(-1).numpy()
        assert np.corrcoef(row, voices[speaker])[0, 1] > 0.9999


def test_only_the_voiced_speakers_are_listed(processor):
    script = parse_script("Speaker 0: One.\nSpeaker 1: Two.\nSpeaker 2: Three.").lines
    voices = {2: speechlike(2 * 3200 / 24000), 1: speechlike(4 * 3200 / 24000)}
    text, lengths = render(processor, script, voices)
    assert " Voice input:\n Speaker 1:<|vision_start|>" in text and " Speaker 0:<|vision_start|>" not in text
    assert text.index(" Speaker 1:<|vision_start|>") < text.index(" Speaker 2:<|vision_start|>")
    assert lengths == [voices[1].size, voices[2].size]


# --- plain text: one prompt line per line ----------------------------------------------------------------


def test_plain_multi_line_text_keeps_one_prompt_line_per_line(processor):
    script = parse_script("Hello there.\n\n  How   are you?\r\nFine.")
    assert not script.is_dialogue and script.speaker_numbers == [0]
    assert [(line.speaker, line.text) for line in script.lines] == [
        (0, "Hello there."),
        (0, "How are you?"),
        (0, "Fine."),
    ]
    text, _ = render(processor, script.lines, {})
    expected = " Text input:\n Speaker 0: Hello there.\n Speaker 0: How are you?\n Speaker 0: Fine.\n Speech output:"
    assert expected in text


def test_a_line_without_a_label_is_another_line_of_the_previous_speaker():
    assert lines("Speaker 1: Hi.\nHow are you?\nSpeaker 2: Fine.") == [(0, "Hi."), (0, "How are you?"), (1, "Fine.")]
    # a bare label takes the next line as its text
    assert lines("Speaker 0:\nHello.\nSpeaker 1: Hi.") == [(0, "Hello."), (1, "Hi.")]


# --- labels that would be read aloud ---------------------------------------------------------------------


def test_a_literal_backslash_n_before_a_label_is_refused_with_a_hint():
    with pytest.raises(ScriptError) as caught:
        parse_script("Speaker 0: Hi.\\nSpeaker 1: Hello.")
    message = str(caught.value)
    assert "line 1" in message and "'Speaker 1:'" in message and "literal backslash-n" in message
    assert "$'Speaker 0: Hi.\\nSpeaker 1: Hello.'" in message  # how to type it in bash


@pytest.mark.parametrize(
    "text",
    [
        "Speaker 0: Hi. Speaker 1: Hello.",  # two labels on one line
        "Hello. Speaker 1: bye.",  # plain text with a label inside
        "Speaker 0: Hi.\nSpeaker 1: Hello. speaker 0: Again.",  # on a later line, any case
        "Speaker 0: Speaker 1: hi",
    ],
)
def test_a_label_in_the_middle_of_a_line_is_refused(text):
    with pytest.raises(ScriptError, match=r"in the middle of the line.*must start its own line"):
        parse_script(text)


def test_label_spellings_the_original_accepts_are_scripts():
    assert lines("speaker 1: a\nSPEAKER  2 : b") == [(0, "a"), (1, "b")]
    assert lines("Speaker1: a\nSpeaker2: b") == [(0, "a"), (1, "b")]
    assert lines("Speaker 007: a\nSpeaker 7: b") == [(0, "a"), (0, "b")]  # one speaker, as int("007") == 7
    with pytest.raises(ScriptError, match="speaker numbers go from 0 to 999"):
        parse_script("Speaker 1000: a")  # the speakers field could not name it


def test_words_that_only_look_like_labels_are_text():
    assert lines("The loudspeaker 2: very loud.") == [(0, "The loudspeaker 2: very loud.")]
    assert lines("Our speaker number 1: Alice.") == [(0, "Our speaker number 1: Alice.")]


def test_the_service_reports_a_label_problem_as_bad_input(service):
    with pytest.raises(RequestError, match=r"^invalid input: text: line 1 has the speaker label 'Speaker 1:'"):
        service.plan({"text": "Speaker 0: Hi.\\nSpeaker 1: Hello."})


# --- the checks that were already there ------------------------------------------------------------------


def test_existing_checks_still_hold():
    with pytest.raises(ScriptError, match="section marker"):
        parse_script("Hello\nSpeech output: x")
    with pytest.raises(ScriptError, match=f"at most {MAX_SPEAKERS}"):
        parse_script("\n".join(f"Speaker {n}: x" for n in range(MAX_SPEAKERS + 1)))
    with pytest.raises(ScriptError, match="must start with a 'Speaker N:' line"):
        parse_script("Hello.\nSpeaker 1: Hi.")
    with pytest.raises(ScriptError, match=r"line 2 .* nothing to say"):
        parse_script("Speaker 1: Hi.\nSpeaker 2:")
    script = parse_script("Speaker 3: a\nSpeaker 1: b")
    assert script.speaker_numbers == [1, 3] and script.is_dialogue
