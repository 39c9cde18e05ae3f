"""Tiny random stand-ins for T2I-CompBench++'s and GenEval's expert models.

Nothing is downloaded: each builder makes a transformers model from a config, randomises
it and saves it in the hub repository's layout, so the metrics load it through their own
``from_pretrained`` paths:

- BLIP VQA (``BlipForQuestionAnswering`` + a plain BERT WordPiece tokenizer; BLIP's
  ``[DEC]`` / ``[ENC]`` are the two ids after its vocabulary, as on the hub);
- OWLv2 (``Owlv2ForObjectDetection`` + a CLIP BPE tokenizer whose id 0 is "!", OWLv2's
  padding token: OWLv2 treats a query whose first id is 0 as padding);
- DPT-hybrid (``DPTForDepthEstimation`` with a three-stage BiT backbone, as
  ``Intel/dpt-hybrid-midas``);
- Mask2Former with 80 classes, written as ``Mask2FormerForUniversalSegmentation``
  checkpoints are (``model.*``, ``class_predictor.*``, ``criterion.empty_weight``);
- CLIP (``tests/metric_fixtures.tiny_clip_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from metric_fixtures import randomise, tiny_clip_folder
from tiny_models import WORDS, write_tiny_vocab

EXTRA_WORDS = (
    "yes no bench bowl cake horse vase sheep giraffe lamp frog chicken apple banana mouse key person girl "
    "orange oven motorcycle pink purple brown of a"
).split()


# ----------------------------------------------------------------------------- BLIP


def blip_tokenizer_folder(folder: Path):
    """A plain BERT WordPiece tokenizer, as the hub BLIP repositories ship (BLIP's [DEC] and
    [ENC] are the two ids after the vocabulary, known to the model, not the tokenizer)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS) | set(EXTRA_WORDS)) + chars + ["##" + c for c in chars]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer.from_pretrained(folder, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_blip_folder(folder: Path, seed: int = 3) -> Path:
    """BLIP's decoder cross-attends to the question encoder's states, so text and vision
    widths are equal (768 in the real model)."""
    from transformers import BlipConfig, BlipForQuestionAnswering

    tokenizer = blip_tokenizer_folder(folder)
    dec = len(tokenizer)  # [DEC]; [ENC] = dec + 1
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer) + 2, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=64, encoder_hidden_size=32, bos_token_id=dec, pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=32),
        label_smoothing=0.0,
    )
    model = randomise(BlipForQuestionAnswering(config), seed, std=0.3).eval()
    model.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- OWLv2


def owl_tokenizer_folder(folder: Path):
    """A CLIP BPE tokenizer with "!" at id 0 (as in CLIP's real vocabulary) as padding."""
    from transformers import CLIPTokenizer

    write_tiny_vocab(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    bang, start = vocab["!"], vocab["<|startoftext|>"]
    vocab["!"], vocab["<|startoftext|>"] = start, bang
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=16, pad_token="!")
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id != 0
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_owlv2_folder(folder: Path, seed: int = 4) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    tokenizer = owl_tokenizer_folder(folder)
    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=24, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=0,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=24,
    )
    model = randomise(Owlv2ForObjectDetection(config), seed, std=0.3).eval()
    model.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- DPT


def tiny_dpt_folder(folder: Path, seed: int = 5) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=16,
        is_hybrid=True, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 16, 16], reassemble_factors=[1, 1, 1, 0.5],
        fusion_hidden_size=16, head_in_index=-1, backbone_featmap_shape=[1, 64, 2, 2],
        backbone_config=dict(
            model_type="bit", global_padding="same", layer_type="bottleneck", depths=[1, 1, 1],
            out_features=["stage1", "stage2", "stage3"], embedding_size=8, hidden_sizes=[16, 32, 64], num_groups=4,
        ),
    )
    model = randomise(DPTForDepthEstimation(config), seed, std=0.2).eval()
    model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------ Mask2Former


def tiny_mask2former_config(num_labels: int = 80):
    from transformers import Mask2FormerConfig

    return Mask2FormerConfig(
        backbone_config=dict(
            model_type="swin", embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
            out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0,
        ),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=6, num_labels=num_labels, common_stride=4,
        use_pretrained_backbone=False,
    )


def tiny_mask2former_folder(folder: Path, seed: int = 6, num_labels: int = 80, drop: tuple[str, ...] = ()) -> Path:
    """A ``Mask2FormerForUniversalSegmentation``-layout checkpoint (built from its parts:
    the full class needs scipy for its training loss). ``drop`` leaves tensors out."""
    from safetensors.torch import save_file
    from transformers import Mask2FormerModel

    config = tiny_mask2former_config(num_labels)
    model = randomise(Mask2FormerModel(config), seed, std=0.2).eval()
    head = randomise(torch.nn.Linear(config.hidden_dim, num_labels + 1), seed + 1, std=0.5)
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update({"class_predictor.weight": head.weight.detach(), "class_predictor.bias": head.bias.detach()})
    state["criterion.empty_weight"] = torch.cat([torch.ones(num_labels), torch.tensor([config.no_object_weight])])
    for name in drop:
        state.pop(name)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["Mask2FormerForUniversalSegmentation"]
    config.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- roles


def compbench_roles(root: Path) -> Path:
    """One folder with blip/, detector/, depth/ and clip/ subfolders (the metric's roles)."""
    tiny_blip_folder(root / "blip")
    tiny_owlv2_folder(root / "detector")
    tiny_dpt_folder(root / "depth")
    tiny_clip_folder(root / "clip", seed=7)
    return root


def geneval_roles(root: Path) -> Path:
    tiny_mask2former_folder(root / "detector")
    tiny_clip_folder(root / "clip", seed=8)
    return root
