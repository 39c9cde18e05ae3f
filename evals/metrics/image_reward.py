"""ImageReward v1.0 (Xu et al., 2023): BLIP with a reward head.

reward = (head(t) − 0.16717362830052426) / 1.0333394966054072

where t is the text encoder's output at the [CLS] position when the prompt (BERT
tokens, padded and truncated to 35) cross-attends to the image's ViT-L/16 tokens, and
head is ImageReward's MLP 768→1024→128→64→16→1 (linear layers only: the upstream code
comments out its ReLUs, so the head is one affine map in effect, kept layer by layer to
load the file as it is).

The official ``ImageReward.pt`` (``THUDM/ImageReward``) holds BLIP's parameters
(``blip.visual_encoder.*``: a timm-style ViT; ``blip.text_encoder.*``: BLIP's BERT with
cross-attention) and the head (``mlp.layers.*``). They are renamed onto transformers'
``BlipVisionModel`` / ``BlipTextModel`` (the same networks) and loaded strictly; only
the tensors upstream never uses for the reward (BLIP's contrastive ``vision_proj`` /
``text_proj`` and the ``position_ids`` buffer) are skipped, by name.

Preprocessing is ImageReward's: torchvision ``Resize(224, bicubic)`` + ``CenterCrop(224)``,
RGB, CLIP mean/std; tokenizer ``bert-base-uncased`` with BLIP's two added special tokens
([DEC], [ENC]) and the [CLS] id kept at position 0, as ``ImageReward.score`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.blip_convert import vit_key
from lpo.evals.metrics.preprocess import CLIP_MEAN, CLIP_STD, resize_shorter_center_crop, to_pixel_values
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import from_pretrained, load_checkpoint, load_into, provenance, resolve_file, weights_fix

IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
IMAGE_REWARD_TOKENIZER = "google-bert/bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
_HEAD_LINEAR_INDICES = (0, 2, 4, 6, 7)  # Linear positions in the upstream nn.Sequential (Dropouts between)


@dataclass(frozen=True)
class BlipArchitecture:
    """BLIP's shape; ``BLIP_LARGE`` is ImageReward's (ViT-L/16, 224 px + med_config.json)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    max_positions: int
    vision_eps: float = 1e-6  # BLIP's ViT: partial(nn.LayerNorm, eps=1e-6)
    text_eps: float = 1e-12  # med_config.json

    def vision_config(self):
        from transformers import BlipVisionConfig

        return BlipVisionConfig(
            hidden_size=self.vision_width,
            intermediate_size=self.vision_mlp,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.vision_eps,
        )

    def text_config(self):
        from transformers import BlipTextConfig

        return BlipTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            encoder_hidden_size=self.vision_width,
            intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.max_positions,
            hidden_act="gelu",
            layer_norm_eps=self.text_eps,
            pad_token_id=0,
            is_decoder=True,  # transformers builds the cross-attention layers only for decoders; run as an encoder
        )


BLIP_LARGE = BlipArchitecture(
    image_size=224,
    patch_size=16,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    vision_mlp=4096,
    vocab_size=30524,  # bert-base-uncased + [DEC] + [ENC]
    text_width=768,
    text_layers=12,
    text_heads=12,
    text_mlp=3072,
    max_positions=512,
)


def reward_head(in_features: int) -> nn.Sequential:
    """ImageReward's MLP with the upstream layer indices (Linear at 0, 2, 4, 6, 7)."""
    widths = (in_features,) + HEAD_WIDTHS
    return nn.Sequential(
        nn.Linear(widths[0], widths[1]),
        nn.Dropout(0.2),
        nn.Linear(widths[1], widths[2]),
        nn.Dropout(0.2),
        nn.Linear(widths[2], widths[3]),
        nn.Dropout(0.1),
        nn.Linear(widths[3], widths[4]),
        nn.Linear(widths[4], widths[5]),
    )


class ImageRewardModel(nn.Module):
    """BLIP vision tower + cross-attending text encoder + reward head (un-normalised)."""

    def __init__(self, architecture: BlipArchitecture):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(architecture.vision_config())
        self.text = BlipTextModel(architecture.text_config(), add_pooling_layer=False)
        self.mlp = nn.Module()
        self.mlp.layers = reward_head(architecture.text_width)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state  # (B, 1 + patches, Dv)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=image_mask,
            is_decoder=False,  # bidirectional self-attention, as BLIP's encoder mode
        ).last_hidden_state
        return self.mlp.layers(text[:, 0, :].float()).squeeze(-1)  # upstream casts t to float32


_IGNORED = re.compile(r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|^blip\.text_encoder\.embeddings\.position_ids$")
def image_reward_to_model(
    state: Mapping[str, torch.Tensor], *, metric: str, source: str, fix: str
) -> dict[str, torch.Tensor]:
    """Rename an ``ImageReward.pt`` state dict onto ``ImageRewardModel``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _IGNORED.match(key):
            continue
        if key.startswith("blip.visual_encoder."):
            name = vit_key(key[len("blip.visual_encoder.") :])
            if name is not None:
                out["vision." + name] = tensor
                continue
        elif key.startswith("blip.text_encoder."):
            # BLIP's med.py is the BERT that transformers' BlipText* ports: same names.
            out["text." + key[len("blip.text_encoder.") :]] = tensor
            continue
        elif key.startswith("mlp.layers."):
            out[key] = tensor
            continue
        raise LpoError(f"{metric}: {source} holds {key!r}, not a tensor of ImageReward (BLIP + MLP); {fix}")
    return out


def load_blip_tokenizer(ref: str, *, metric: str, fix: str):
    """bert-base-uncased with BLIP's ``init_tokenizer`` additions ([DEC] as bos, [ENC])."""
    from transformers import BertTokenizer

    tokenizer = from_pretrained(BertTokenizer.from_pretrained, ref, metric=metric, what="BERT tokenizer", fix=fix)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


@METRICS.register("image_reward")
class ImageReward(BatchedMetric):
    name = "image_reward"
    version = "v1.0+lpo1"
    formula = "(MLP(BLIP cross-attended [CLS]) − 0.16717) / 1.03334, ImageReward v1.0"
    comparability = "published"

    def __init__(self, spec: MetricSpec, *, architecture: BlipArchitecture = BLIP_LARGE):
        super().__init__(spec)
        from accelerate import init_empty_weights

        weights = spec.weights or IMAGE_REWARD_REPO
        processor = spec.processor or IMAGE_REWARD_TOKENIZER
        fix = weights_fix(self.name, f"{IMAGE_REWARD_FILE} from {IMAGE_REWARD_REPO}")
        path = resolve_file(weights, IMAGE_REWARD_FILE, metric=self.name, fix=fix)
        state = load_checkpoint(path, metric=self.name, fix=fix)
        state = image_reward_to_model(state, metric=self.name, source=str(path), fix=fix)
        with init_empty_weights():
            model = ImageRewardModel(architecture)
        load_into(model, state, metric=self.name, source=str(path), layout="an ImageReward state dict", fix=fix)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.mlp.float()  # the head runs in float32 upstream
        self.tokenizer = load_blip_tokenizer(processor, metric=self.name, fix=fix)
        self.architecture = architecture
        self.weights = {"model": provenance(weights, path, IMAGE_REWARD_FILE), "processor": processor}

    def pixel_values(self, images) -> torch.Tensor:
        size = self.architecture.image_size
        pixels = to_pixel_values([resize_shorter_center_crop(image, size) for image in images], CLIP_MEAN, CLIP_STD)
        return pixels.to(device=self.device, dtype=self.dtype)

    def tokens(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def score_batch(self, images, prompts) -> torch.Tensor:
        input_ids, attention_mask = self.tokens(prompts)
        head = self.model(self.pixel_values(images), input_ids, attention_mask)
        return (head - REWARD_MEAN) / REWARD_STD
