#!/usr/bin/env python
"""Build a tiny random-weight VibeVoice checkpoint for tests and smoke runs.

    python scripts/make_tiny_model.py OUT_DIR [--seed N]

It uses the real transformers classes (VibeVoiceConfig, VibeVoiceForConditionalGeneration,
VibeVoiceProcessor), a small byte-level BPE tokenizer holding VibeVoice's special tokens, and
a chat template that renders the same prompt layout as the real checkpoints. Saved with
``save_pretrained``, so ``VV_MODEL=OUT_DIR`` loads it exactly like a real checkpoint.

Deterministic output length: the lm_head rows of the four tokens VibeVoice may emit are
zero, so their logits tie, and the audio token has the lowest id of the four, so argmax
always picks it. Every step is then one audio frame and a request produces exactly its
frame cap. Sampling with a temperature picks among the four uniformly instead.
The acoustic tokenizer keeps the real hop of 3200 samples (24 kHz / 7.5 Hz).
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
]
VOCAB_SIZE = 512
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 8,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
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


def build(out_dir: Path, seed: int = 0) -> Path:
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
    args = parser.parse_args()
    path = build(args.out_dir, seed=args.seed)
    print(f"tiny VibeVoice written to {path}")


if __name__ == "__main__":
    main()
