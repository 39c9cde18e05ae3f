"""A tiny random HPSv3 in the official layout: base folder (config, tokenizer, image processor) + HPSv3.safetensors.

The tokenizer is byte-level BPE over the 256 byte symbols (no merges), with Qwen2-VL's special
tokens and Qwen2-VL's chat template for a user turn; the model is Qwen2-VL at toy width with
the vision tower 48 wide and the decoder 24 wide (a tensor wired to the wrong tower fails on
shape). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metric_fixtures import randomise

QWEN2_VL_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                           "<|video_pad|>"]
# Qwen2-VL-Instruct's chat template, reduced to what a text + image user turn uses
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_base_folder(folder: Path):
    """Config, tokenizer and image processor of a toy Qwen2-VL; returns the config."""
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLImageProcessorPil
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", eos_token="<|im_end|>",
                               unk_token=None, bos_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2_VL_SPECIAL_TOKENS})
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 1]},  # head 6: 3 rotary pairs
        ),
        vision_config=dict(depth=1, embed_dim=48, hidden_size=24, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
    )
    config.save_pretrained(folder)
    return config


def write_hpsv3_checkpoint(root: Path, *, seed: int = 30, layout: str = "new") -> tuple[Path, Path]:
    """(base folder, weights folder holding HPSv3.safetensors) of a random tiny HPSv3.

    layout "new": transformers ≥ 4.52's keys (model.language_model.*, model.visual.*);
    "old": the earlier ones (model.* decoder, visual.*). Both hold lm_head and rm_head.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    from lpo.evals.metrics.hpsv3 import reward_head

    base = root / "base"
    config = write_base_folder(base)
    config.text_config.vocab_size += 1  # <|Reward|>, added by the metric as by upstream
    torch.manual_seed(seed)
    model = randomise(Qwen2VLForConditionalGeneration(config), seed, std=0.1)
    head = randomise(reward_head(config.text_config.hidden_size), seed + 1, std=0.3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "old":
        state = {(k[len("model."):] if k.startswith("model.visual.") else
                  "model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k): v
                 for k, v in state.items()}
    state.update({f"rm_head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    weights = root / f"weights-{layout}"
    weights.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights / "HPSv3.safetensors"))
    return base, weights
