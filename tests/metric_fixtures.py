"""Tiny random stand-ins for the metrics' official checkpoints, saved in the official layouts.

Nothing is downloaded: each builder makes a model from a config, randomises it, and
writes it where a metric reads it (a transformers folder, an open_clip or ImageReward
``.pt``, the aesthetic ``.pth``), so the tests load through the metrics' own paths.

Widths differ between towers (vision 40, text 24) so that a tensor wired to the wrong
tower fails on shape instead of passing by accident.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tiny_models import WORDS, write_tiny_vocab

CONTEXT = 16  # tiny CLIP text context (77 for real CLIPs)
IMAGE = 32  # tiny image size (224 for real scorers)
PATCH = 8
VISION_WIDTH, TEXT_WIDTH, EMBED = 40, 24, 16
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def randomise(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Every parameter random, layer-norm scales around 1 (so a swapped one is noticed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            is_norm_scale = name.endswith("weight") and param.ndim == 1
            param.copy_(noise + 1.0 if is_norm_scale else noise)
    return module


def random_image(seed: int, size: tuple[int, int] = (IMAGE, IMAGE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def normalise_pixels(image: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize of an RGB image that already has the model's size, (3, H, W)."""
    array = (np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return torch.from_numpy(array).permute(2, 0, 1)


# ----------------------------------------------------------------------------- CLIP


def clip_tokenizer_folder(folder: Path, *, pad_token: str = "<|endoftext|>"):
    """A CLIP tokenizer (the tiny BPE vocabulary of tests/tiny_models.py) saved to ``folder``."""
    from transformers import CLIPTokenizer

    write_tiny_vocab(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=CONTEXT, pad_token=pad_token)
    tokenizer.save_pretrained(folder)
    return tokenizer


def clip_processor_folder(folder: Path):
    """Tokenizer + PIL CLIP image processor (shorter side and crop = IMAGE) in one folder."""
    from transformers import CLIPImageProcessorPil

    tokenizer = clip_tokenizer_folder(folder)
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(folder)
    return tokenizer


def tiny_clip_config(tokenizer, *, logit_scale: float = 2.6592):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=3,
            max_position_embeddings=CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=VISION_WIDTH, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE, patch_size=PATCH
        ),
        projection_dim=EMBED,
        logit_scale_init_value=logit_scale,
    )


def tiny_clip_folder(folder: Path, *, seed: int = 0, logit_scale: float = 3.0, flip_image_projection: bool = False) -> Path:
    """A tiny ``CLIPModel`` + tokenizer + image processor saved like a hub CLIP repository.

    ``flip_image_projection`` negates the image projection: the same model with every
    cosine negated, which makes negative cosines certain.
    """
    from transformers import CLIPModel

    tokenizer = clip_processor_folder(folder)
    model = randomise(CLIPModel(tiny_clip_config(tokenizer)), seed, std=0.1).eval()
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
        if flip_image_projection:
            model.visual_projection.weight.neg_()
    model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------ open_clip


class RefBlock(nn.Module):
    """open_clip's ResidualAttentionBlock (pre-norm, nn.MultiheadAttention, GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, mlp), gelu=nn.GELU(), c_proj=nn.Linear(mlp, width)))

    def forward(self, x, attn_mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int):
        super().__init__()
        self.resblocks = nn.ModuleList([RefBlock(width, heads, mlp) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class RefVisual(nn.Module):
    def __init__(self, arch):
        super().__init__()
        w, grid = arch.vision_width, arch.image_size // arch.patch_size
        self.conv1 = nn.Conv2d(3, w, arch.patch_size, arch.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = RefTransformer(w, arch.vision_layers, arch.vision_heads, arch.vision_mlp)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, arch.embed_dim))

    def forward(self, pixels):
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # (B, grid², w)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class RefOpenClip(nn.Module):
    """An open_clip ``CLIP`` (ViT image tower + text transformer), written from its structure."""

    def __init__(self, arch):
        super().__init__()
        self.arch = arch
        self.visual = RefVisual(arch)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(arch.context_length, arch.text_width))
        self.transformer = RefTransformer(arch.text_width, arch.text_layers, arch.text_heads, arch.text_mlp)
        self.ln_final = nn.LayerNorm(arch.text_width)
        self.text_projection = nn.Parameter(torch.zeros(arch.text_width, arch.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        mask = torch.full((arch.context_length, arch.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)  # causal, as open_clip

    def encode_image(self, pixels):
        return nn.functional.normalize(self.visual(pixels), dim=-1)

    def encode_text(self, ids, eot_id: int):
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x, self.attn_mask))
        eot = (ids == eot_id).int().argmax(dim=-1)  # open_clip's argmax(ids): eot has the largest real id
        return nn.functional.normalize(x[torch.arange(ids.shape[0]), eot] @ self.text_projection, dim=-1)


def tiny_open_clip_architecture(vocab_size: int):
    from lpo.evals.metrics.open_clip_convert import OpenClipArchitecture

    return OpenClipArchitecture(
        embed_dim=EMBED,
        image_size=IMAGE,
        patch_size=PATCH,
        vision_width=VISION_WIDTH,
        vision_layers=2,
        vision_heads=2,
        vision_mlp=48,
        context_length=CONTEXT,
        vocab_size=vocab_size,
        text_width=TEXT_WIDTH,
        text_layers=2,
        text_heads=3,
        text_mlp=37,
    )


def tiny_open_clip(arch, seed: int) -> RefOpenClip:
    torch.manual_seed(seed)
    return randomise(RefOpenClip(arch), seed, std=0.2).eval()


# ----------------------------------------------------------------------- BLIP / BERT


def bert_tokenizer_folder(folder: Path):
    """A WordPiece vocabulary with BERT's special tokens, every tiny word and every character."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + chars + ["##" + c for c in chars]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")  # bert-base-uncased's file layout
    tokenizer = BertTokenizer.from_pretrained(folder, do_lower_case=True)
    assert len(tokenizer) == len(dict.fromkeys(vocab)), "the vocabulary file was not read"
    return tokenizer


class RefVit(nn.Module):
    """BLIP's timm-style ViT (models/vit.py): cls_token, pos_embed, blocks, norm (eps 1e-6)."""

    def __init__(self, arch):
        super().__init__()
        w = arch.vision_width
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, w, arch.patch_size, arch.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, (arch.image_size // arch.patch_size) ** 2 + 1, w))
        self.blocks = nn.ModuleList()
        for _ in range(arch.vision_layers):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(w, eps=1e-6)
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(w, 3 * w)
            block.attn.proj = nn.Linear(w, w)
            block.norm2 = nn.LayerNorm(w, eps=1e-6)
            block.mlp = nn.Module()
            block.mlp.fc1 = nn.Linear(w, arch.vision_mlp)
            block.mlp.fc2 = nn.Linear(arch.vision_mlp, w)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(w, eps=1e-6)
        self.heads = arch.vision_heads

    def forward(self, pixels):
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            B, N, C = x.shape
            qkv = block.attn.qkv(block.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            attn = (qkv[0] @ qkv[1].transpose(-2, -1)) * (C // self.heads) ** -0.5
            x = x + block.attn.proj((attn.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(B, N, C))
            x = x + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(x))))
        return self.norm(x)


def tiny_blip_architecture(vocab_size: int):
    from lpo.evals.metrics.image_reward import BlipArchitecture

    return BlipArchitecture(
        image_size=IMAGE,
        patch_size=PATCH,
        vision_width=VISION_WIDTH,
        vision_layers=2,
        vision_heads=2,
        vision_mlp=48,
        vocab_size=vocab_size,
        text_width=TEXT_WIDTH,
        text_layers=2,
        text_heads=3,
        text_mlp=37,
        max_positions=40,
    )


# --------------------------------------------------------- official-layout checkpoints


def write_hps_checkpoints(root: Path):
    """``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt`` (different weights, each a
    training checkpoint with the open_clip weights under ``state_dict``) and a tokenizer
    folder; returns (tokenizer, architecture, {file name: reference model})."""
    tokenizer = clip_tokenizer_folder(root / "tokenizer")
    arch = tiny_open_clip_architecture(len(tokenizer))
    refs = {}
    for seed, filename in [(1, "HPS_v2_compressed.pt"), (2, "HPS_v2.1_compressed.pt")]:
        ref = tiny_open_clip(arch, seed)
        torch.save({"state_dict": ref.state_dict(), "epoch": 3}, root / filename)
        refs[filename] = ref
    return tokenizer, arch, refs


def write_image_reward_checkpoint(root: Path):
    """``ImageReward.pt`` in ImageReward's key layout (BLIP ViT + BERT + MLP, plus the
    tensors upstream never uses for the reward) and a BERT tokenizer folder; returns
    (tokenizer, architecture, (vit, text encoder, head linears), state dict)."""
    from transformers import BlipTextModel

    tokenizer = bert_tokenizer_folder(root / "tokenizer")
    arch = tiny_blip_architecture(len(tokenizer) + 2)  # + BLIP's [DEC] and [ENC]
    vit = randomise(RefVit(arch), seed=3, std=0.2).eval()
    text = randomise(BlipTextModel(arch.text_config(), add_pooling_layer=False), seed=4, std=0.2).eval()
    widths = (TEXT_WIDTH, 1024, 128, 64, 16, 1)
    head = [randomise(nn.Linear(widths[n], widths[n + 1]), seed=10 + n, std=0.3) for n in range(5)]
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(arch.max_positions)[None]  # med.py's persistent buffer
    state.update({"blip.vision_proj.weight": torch.zeros(8, VISION_WIDTH), "blip.vision_proj.bias": torch.zeros(8)})
    state.update({"blip.text_proj.weight": torch.zeros(8, TEXT_WIDTH), "blip.text_proj.bias": torch.zeros(8)})
    for index, linear in zip((0, 2, 4, 6, 7), head):
        state[f"mlp.layers.{index}.weight"], state[f"mlp.layers.{index}.bias"] = linear.weight.data, linear.bias.data
    torch.save(state, root / "ImageReward.pt")
    return tokenizer, arch, (vit, text, head), state


def write_aesthetic_head(root: Path, seed: int = 20) -> dict[str, torch.Tensor]:
    """``sac+logos+ava1-l14-linearMSE.pth`` for a tiny CLIP (input width EMBED)."""
    widths = (EMBED, 1024, 128, 64, 16, 1)
    state = {}
    for n, index in enumerate((0, 2, 4, 6, 7)):
        linear = randomise(nn.Linear(widths[n], widths[n + 1]), seed + n, std=0.3)
        state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = linear.weight.data, linear.bias.data
    root.mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "sac+logos+ava1-l14-linearMSE.pth")
    return state
