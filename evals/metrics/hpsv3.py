"""HPSv3 (Ma et al., ICCV 2025): Qwen2-VL-7B read at a reward token, score = μ of its head.

score = μ, the first of the two outputs of the reward head at the ``<|Reward|>`` token
(the second parameterises the uncertainty σ of the training loss and is not a score).

How upstream (``MizzenAI/HPSv3``, ``hpsv3/inference.py`` and ``Qwen2VLRewardModelBT``) scores
one image, and how this file does the same:

- **model**: Qwen2-VL-7B-Instruct with one added special token ``<|Reward|>`` (the embedding
  resized to ``len(tokenizer)``), plus ``rm_head`` = Linear(hidden→1024)–ReLU–Dropout–
  Linear(1024→16)–ReLU–Linear(16→2), kept in float32. ``HPSv3.safetensors`` holds every
  tensor; the language-model head (``lm_head``) is unused for scoring and not built here.
- **image**: RGB, resized with PIL bicubic to the multiple-of-28 size whose area is
  256·28·28 px (``qwen_vl_utils.smart_resize`` with min = max pixels; 512² and 1024² → 448²),
  then Qwen2-VL's image processor (rescale, CLIP mean/std, 14-px patches, 2×2 merge: 256
  image tokens at 448²). The PIL image processor is used, as upstream's environment did.
- **text**: one user turn, image first, then :func:`reward_text` (the instruction with the
  prompt, and the suffix holding ``<|Reward|>``), through the tokenizer's chat template with
  the generation prompt; right padding.
- **positions**: upstream runs the decoder on embeddings without ``input_ids``, so Qwen2-VL
  takes its text-only branch and every token, image tokens included, gets the 1-D position
  (cumulative attention mask − 1) on all three M-RoPE axes, not the 2-D image grid. The
  model was trained that way; the same positions are passed explicitly here.
- **head**: the decoder's final hidden state at ``<|Reward|>`` (after the final norm), cast
  to float32, through ``rm_head``; μ = output 0.

Two key layouts of the checkpoint are read: transformers ≥ 4.52's (``model.language_model.*``,
``model.visual.*``) and the older one (``model.*`` for the decoder, ``visual.*``).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.hpsv3_prompt import REWARD_TOKEN, reward_text
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import from_pretrained, load_into, provenance, resolve_file, weights_fix

HPSV3_REPO = "MizzenAI/HPSv3"
HPSV3_FILE = "HPSv3.safetensors"
HPSV3_BASE = "Qwen/Qwen2-VL-7B-Instruct"  # config, tokenizer, image processor and chat template
IMAGE_FACTOR = 28  # patch 14 × merge 2
IMAGE_PIXELS = 256 * 28 * 28  # upstream's min_pixels = max_pixels
IMAGE_PAD = "<|image_pad|>"
HEAD_HIDDEN = (1024, 16)


def smart_resize(height: int, width: int, *, factor: int = IMAGE_FACTOR, pixels: int = IMAGE_PIXELS) -> tuple[int, int]:
    """(height, width) HPSv3 resizes an image to: multiples of ``factor``, area as near ``pixels`` as they allow.

    Qwen2-VL's rule with min_pixels = max_pixels = ``pixels``: round each side to the
    factor; if the area is above, scale down and floor; if below, scale up and ceil.
    """
    if max(height, width) / min(height, width) > 200:
        raise LpoError(f"hpsv3: image of {width}x{height} px is too elongated (aspect ratio over 200); crop it first")
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > pixels:
        beta = math.sqrt(height * width / pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < pixels:
        beta = math.sqrt(pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def reward_head(hidden_size: int) -> nn.Sequential:
    """HPSv3's ``rm_head`` (its ``ranknet`` head without extra arguments): indices 0, 3, 5 hold weights."""
    return nn.Sequential(
        nn.Linear(hidden_size, HEAD_HIDDEN[0]), nn.ReLU(), nn.Dropout(0.05),
        nn.Linear(HEAD_HIDDEN[0], HEAD_HIDDEN[1]), nn.ReLU(), nn.Linear(HEAD_HIDDEN[1], 2),
    )


def split_checkpoint(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder + vision tower in ``Qwen2VLModel``'s names, reward head) of an HPSv3 state dict.

    Accepts both layouts (see the module docstring); ``lm_head.weight`` is dropped.
    """
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("rm_head."):
            head[key[len("rm_head."):]] = tensor
        elif key == "lm_head.weight":
            continue
        elif key.startswith(("model.language_model.", "model.visual.")):
            backbone[key[len("model."):]] = tensor
        elif key.startswith("visual."):
            backbone[key] = tensor
        elif key.startswith("model."):
            backbone["language_model." + key[len("model."):]] = tensor
        else:
            backbone[key] = tensor  # reported by the strict key check
    return backbone, head


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(3, B, L) positions: the cumulative attention mask − 1 on every M-RoPE axis (upstream's text-only branch)."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions.unsqueeze(0).expand(3, -1, -1)


@METRICS.register("hpsv3")
class HPSv3(BatchedMetric):
    name = "hpsv3"
    version = "v3.0+lpo1"
    formula = "μ of HPSv3's reward head at <|Reward|> (Qwen2-VL-7B), images at 256·28² px"
    comparability = "published"

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoTokenizer, Qwen2VLModel

        if not hasattr(Qwen2VLModel, "get_image_features"):  # before 4.52 Qwen2VLModel was the decoder alone
            import transformers

            raise LpoError(f"hpsv3 needs transformers >= 4.52 (Qwen2-VL's composite model), found "
                           f"{transformers.__version__}; pip install -U transformers")
        try:  # transformers 5 names the PIL processor; in 4.x the plain class is it
            from transformers import Qwen2VLImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import Qwen2VLImageProcessor as ImageProcessor

        weights = spec.weights or HPSV3_REPO
        base = spec.processor or HPSV3_BASE
        fix = weights_fix(self.name, f"{HPSV3_FILE} from {HPSV3_REPO}")
        base_fix = f"pass --metric-processor {self.name}=PATH to a local copy of {HPSV3_BASE} (config, tokenizer, image processor)"
        path = resolve_file(weights, HPSV3_FILE, metric=self.name, fix=fix)
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, base, metric=self.name, what="tokenizer",
                                         fix=base_fix, padding_side="right")
        if not self.tokenizer.chat_template:
            raise LpoError(f"hpsv3: the tokenizer at {base!r} has no chat template; {base_fix}")
        self.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_token_id = self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.image_processor = from_pretrained(ImageProcessor.from_pretrained, base, metric=self.name,
                                               what="image processor", fix=base_fix)
        config = from_pretrained(AutoConfig.from_pretrained, base, metric=self.name, what="config", fix=base_fix)
        text_config = getattr(config, "text_config", config)
        text_config.vocab_size = len(self.tokenizer)  # upstream resizes the embedding to the tokenizer
        config._attn_implementation = "sdpa"  # upstream's config disables flash-attention 2
        with init_empty_weights():
            # in the metric's dtype before loading, so a bf16 7B model is never held in fp32; the
            # rotary buffers are cast too, as upstream's model.to(bfloat16) does
            model = Qwen2VLModel(config).to(dtype=self.dtype)
        head = reward_head(text_config.hidden_size)  # float32, as upstream keeps it
        backbone_state, head_state = split_checkpoint(_read_safetensors(path, fix))
        layout = "an HPSv3 checkpoint (Qwen2-VL decoder, vision tower, rm_head)"
        for module, state in ((model, backbone_state), (head, head_state)):
            load_into(module, state, metric=self.name, source=str(path), layout=layout, fix=fix)
        self.model = model.to(device=self.device).eval()
        self.head = head.to(device=self.device).eval()
        self.weights = {"model": provenance(weights, path, HPSV3_FILE), "processor": base}

    def resize(self, image):
        image = image.convert("RGB")
        height, width = smart_resize(image.height, image.width)
        from PIL import Image

        return image.resize((width, height), Image.BICUBIC)

    def inputs(self, images, prompts) -> dict[str, torch.Tensor]:
        """Tokenised chat turns and pixel patches of one batch, on the metric's device."""
        pixels = self.image_processor(images=[self.resize(image) for image in images], return_tensors="pt")
        grid = pixels["image_grid_thw"]
        merge = self.image_processor.merge_size ** 2
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": reward_text(p)}]}]
                         for p in prompts]
        texts = self.tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        # one <|image_pad|> per merged patch, as Qwen2-VL's processor expands it
        texts = [t.replace(IMAGE_PAD, IMAGE_PAD * int(g.prod() // merge), 1) for t, g in zip(texts, grid)]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        found = (tokens["input_ids"] == self.reward_token_id).sum(dim=1)
        if not bool((found == 1).all()):
            bad = int((found != 1).nonzero()[0])
            raise LpoError(f"hpsv3: prompt {bad + 1} does not hold the reward token exactly once "
                           f"({int(found[bad])} times); remove '{REWARD_TOKEN}' from the prompt")
        batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                 "pixel_values": pixels["pixel_values"].to(self.dtype), "image_grid_thw": grid}
        return {k: v.to(self.device) for k, v in batch.items()}

    def score_batch(self, images, prompts) -> torch.Tensor:
        batch = self.inputs(images, prompts)
        hidden = self.model(**batch, position_ids=text_positions(batch["attention_mask"])).last_hidden_state
        at_reward = hidden[batch["input_ids"] == self.reward_token_id]  # (B, D), one per row
        return self.head(at_reward.float())[:, 0]


def _read_safetensors(path, fix: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # a truncated or foreign file: one message
        from lpo.core.io import one_line

        raise LpoError(f"hpsv3: could not read {path} as safetensors ({one_line(err)}); {fix}") from err
