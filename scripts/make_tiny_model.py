#!/usr/bin/env python
"""Build a tiny random-weight VibeVoice checkpoint for tests and smoke runs.

    python scripts/make_tiny_model.py OUT_DIR [--seed N]

It uses the real transformers classes (VibeVoiceConfig, VibeVoiceForConditionalGeneration,
VibeVoiceProcessor), a small byte-level BPE tokenizer holding VibeVoice's special tokens, and
a chat template that renders the same prompt layout as the real checkpoints. Saved with
``save_pretrained``, so ``VV_MODEL=OUT_DIR`` loads it exactly like a real checkpoint.

Two kinds of checkpoint:

- default (forced frames): the lm_head rows of the four tokens VibeVoice may emit are zero, so
  their logits tie, and the audio token has the lowest id of the four, so argmax always picks it.
  Every step is one audio frame and a request produces exactly its frame cap. Useful for shapes,
  streaming and limits; useless for comparing how two engines choose tokens.
- ``--varied-tokens``: the four rows are random and the audio token is favoured through a
  constant hidden channel, so argmax generations mix audio frames with audio_bos, audio_eos and
  eos at places that depend on the prompt, the voice and the audio fed back. Equivalence tests
  run on this one: a difference in how tokens are scored changes the tokens.

The tokenizer carries the real Qwen2.5 added-token table (special and non-special entries, same
contents and flags; ids differ), so tests can check that user text containing any of them stays
text. The acoustic tokenizer keeps the real hop of 3200 samples (24 kHz / 7.5 Hz).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The audio token comes first so that it wins argmax ties (see the module docstring).
SPECIAL_TOKENS = [
    "<|vision_pad|>",  # audio (diffusion) token
    "<|endoftext|>",  # eos and pad
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",  # audio_bos
    "<|vision_end|>",  # audio_eos
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5's added tokens that are not marked special: a plain tokenizer still matches them in any
# text, so they would become single ids from user input unless the prompt builder escapes them.
NON_SPECIAL_ADDED_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
VOCAB_SIZE = 512
# --varied-tokens: a hidden channel held near this value in every LM input, and the weight it gets
# in the audio token's lm_head row (the audio token's lead); the other allowed rows are N(0, 1).
CONSTANT_CHANNEL = 0
CONSTANT_VALUE = 1.0
AUDIO_LEAD = 3.0
INPUT_STD = 1.0  # std of the token embeddings, so token inputs differ
FEEDBACK_STD = 1.0  # std of the connectors' outputs, so the embedding fed back after a frame depends on it
REAL_HOP_RATIOS = [2, 2, 4, 5, 5, 8]  # product 3200, as in VibeVoice-7B

SYSTEM_PROMPT = (
    " Transform the text provided by various speakers into speech output, "
    "utilizing the distinct voice of each respective speaker.\n"
)

# Same layout as the real checkpoints' template: system line, voice input section (one line per
# speaker with a voice), text input section (one line per message), speech output marker.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(voiced=[]) -%}"
    "{{- system_prompt | default(" + repr(SYSTEM_PROMPT) + ") -}}"
    "{%- for message in messages -%}"
    "{%- for item in message['content'] if item['type'] == 'audio' and message['role'] not in ns.voiced -%}"
    "{%- set ns.voiced = ns.voiced + [message['role']] -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if ns.voiced -%}"
    "{{- ' Voice input:\\n' -}}"
    "{%- for speaker in ns.voiced -%}"
    "{{- ' Speaker ' ~ speaker ~ ':<|vision_start|><|vision_pad|><|vision_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' Text input:\\n' -}}"
    "{%- for message in messages -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{{- ' Speaker ' ~ message['role'] ~ ': ' ~ item['text'] ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- ' Speech output:\\n<|vision_start|>' -}}"
)

# A little English so the BPE learns some merges; byte-level BPE still encodes any text.
_CORPUS = [
    SYSTEM_PROMPT,
    " Voice input:\n Text input:\n Speech output:\n Speaker 0: Speaker 1: Speaker 2: Speaker 3:",
    "Hello, and welcome to the show. Today we talk about speech, voices and the weather.",
    "The quick brown fox jumps over the lazy dog. How are you doing this morning?",
    "One, two, three, four, five. Numbers, names and places are read aloud as written.",
]


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 16 - len(NON_SPECIAL_ADDED_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in NON_SPECIAL_ADDED_TOKENS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
    )
    wrapped.model_max_length = 32768
    return wrapped


def build_config(tokenizer):
    from transformers import VibeVoiceConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return VibeVoiceConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
        },
        audio_config={
            "model_type": "vibevoice_acoustic_tokenizer",
            "hidden_size": 8,
            "num_filters": 2,
            "depths": [1] * (len(REAL_HOP_RATIOS) + 1),
            "downsampling_ratios": REAL_HOP_RATIOS,
            # larger than the defaults so random weights decode to audible levels (std ~0.1)
            "layer_scale_init_value": 1.0,
            "initializer_range": 0.1,
        },
        semantic_model_config={
            "model_type": "vibevoice_acoustic_tokenizer_encoder",
            "hidden_size": 16,
            "num_filters": 2,
            "depths": [1] * (len(REAL_HOP_RATIOS) + 1),
            "downsampling_ratios": REAL_HOP_RATIOS,
        },
        diffusion_head_config={"num_hidden_layers": 1, "intermediate_size": 64},
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        audio_bos_token_id=ids["<|vision_start|>"],
        audio_eos_token_id=ids["<|vision_end|>"],
        audio_token_id=ids["<|vision_pad|>"],
    )


def finish_checkpoint(model, tokenizer):
    """Give ``model`` the released checkpoints' noise scheduler; return the matching processor."""
    from transformers import VibeVoiceAcousticTokenizerFeatureExtractor, VibeVoiceProcessor

    model.generation_config.noise_scheduler_class = "DPMSolverMultistepScheduler"
    model.generation_config.noise_scheduler_config = {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
    }
    return VibeVoiceProcessor(
        feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def vary_tokens(model, config, allowed: list[int]) -> None:
    """Random allowed lm_head rows, with the audio token favoured (see the module docstring).

    Every LM input carries ``CONSTANT_VALUE`` on one hidden channel (token embeddings, and the two
    connectors that make the embedding fed back after an audio frame), so after the final norm that
    channel is consistently positive and the audio row's weight on it gives audio a lead that the
    random rows sometimes overcome.
    """
    import torch

    inner = model.model
    channel = CONSTANT_CHANNEL
    embed = inner.language_model.embed_tokens.weight
    embed.normal_(0.0, INPUT_STD)
    for connector in (inner.multi_modal_projector, inner.semantic_connector):
        connector.linear_2.weight.normal_(0.0, FEEDBACK_STD / connector.linear_2.in_features**0.5)
    embed[:, channel] = CONSTANT_VALUE
    for layer in inner.language_model.layers:  # unit-gain projections, so the prompt reaches the last hidden
        for linear in (*vars(layer.self_attn)["_modules"].values(), *vars(layer.mlp)["_modules"].values()):
            if isinstance(linear, torch.nn.Linear):
                linear.weight.normal_(0.0, 1.0 / linear.in_features**0.5)
    inner.multi_modal_projector.linear_2.bias[channel] += CONSTANT_VALUE / 2
    inner.semantic_connector.linear_2.bias[channel] += CONSTANT_VALUE / 2
    rows = torch.randn(len(allowed), config.text_config.hidden_size)
    rows[allowed.index(config.audio_token_id), channel] += AUDIO_LEAD
    model.lm_head.weight[allowed] = rows


def build(out_dir: Path, seed: int = 0, varied_tokens: bool = False) -> Path:
    """Write the tiny checkpoint (model, processor, generation config) to ``out_dir``."""
    import torch
    from transformers import VibeVoiceForConditionalGeneration

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = VibeVoiceForConditionalGeneration(config).eval()
    with torch.no_grad():
        allowed = [
            config.audio_token_id,
            config.audio_bos_token_id,
            config.audio_eos_token_id,
            config.eos_token_id,
        ]
        if varied_tokens:
            vary_tokens(model, config, allowed)
        else:
            model.lm_head.weight[allowed] = 0.0
    processor = finish_checkpoint(model, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--varied-tokens",
        action="store_true",
        help="random allowed lm_head rows (audio favoured): generations mix frames with audio_bos/audio_eos/eos",
    )
    args = parser.parse_args()
    path = build(args.out_dir, seed=args.seed, varied_tokens=args.varied_tokens)
    print(f"tiny VibeVoice written to {path}")


if __name__ == "__main__":
    main()
