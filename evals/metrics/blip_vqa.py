"""BLIP-VQA's probability of "yes", as T2I-CompBench++ computes it.

For an image and a question (``BLIPvqa_eval/models/blip_vqa.py``, ``vqa_prob``):

    image_embeds = ViT(image)                                   (480×480 input)
    q = BERT-encoder([ENC] question-tokens, cross-attending to image_embeds)
    logits = BERT-decoder([DEC], cross-attending to q)[first position]
    P(yes) = softmax(logits)[yes] / (softmax(logits)[yes] + softmax(logits)[no])

computed here from ``BlipForQuestionAnswering``'s parts (vision model, text encoder,
text decoder one step from the [DEC] token), not through ``generate``. The question is
the official ``pre_question`` (lower-cased, ``.!"()*#:;~`` removed, at most 50 words),
tokenised with BLIP's BERT tokenizer (at most 35 tokens) with its first token replaced
by [ENC]; the decoder cross-attends to all of the question's states (questions are
batched by token length, so none carries padding).

Images are resized to 480×480 (bicubic) and normalised with CLIP's mean/std, as the
official test transform does. ``Salesforce/blip-vqa-capfilt-large`` was converted to
transformers at 384 px (its position embeddings resized from the 480-px original); at
480 px they are resized back bicubically (transformers' ``interpolate_pos_encoding``, the
same interpolation BLIP applies), so they are close to but not bit-identical with the
original checkpoint's. ``lpo convert blip-vqa model_base_vqa_capfilt_large.pth --out DIR``
writes the original at its native 480 px (:mod:`.blip_convert`); pass DIR as the BLIP weights.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.preprocess import to_pixel_values, to_rgb
from lpo.evals.metrics.weights import from_pretrained, model_from_pretrained

BLIP_VQA_DEFAULT = "Salesforce/blip-vqa-capfilt-large"
IMAGE_SIZE = 480
MAX_QUESTION_TOKENS = 35
MAX_QUESTION_WORDS = 50


def pre_question(question: str, max_words: int = MAX_QUESTION_WORDS) -> str:
    """BLIP's question normalisation (``data/utils.py``)."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def yes_probability(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    image_index: torch.Tensor,
    decoder_start_id: int,
    yes_id: int,
    no_id: int,
) -> torch.Tensor:
    """P(yes) / (P(yes) + P(no)) of each question, shape (Q,).

    ``pixel_values`` (B, 3, H, W); ``input_ids`` / ``attention_mask`` (Q, L) with [ENC]
    first; ``image_index`` (Q,) the image each question asks about.
    """
    image_embeds = model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
    image_embeds = image_embeds.index_select(0, image_index)  # (Q, N, D)
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    question_states = model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
    ).last_hidden_state
    start = torch.full((input_ids.shape[0], 1), decoder_start_id, dtype=torch.long, device=input_ids.device)
    logits = model.text_decoder(
        input_ids=start, encoder_hidden_states=question_states, encoder_attention_mask=attention_mask
    ).logits[:, 0, :]
    probs = torch.softmax(logits.float(), dim=-1)
    return probs[:, yes_id] / (probs[:, yes_id] + probs[:, no_id])


class BlipVqa:
    """A BLIP VQA model with its tokenizer: ``yes_probability(images, questions)``."""

    def __init__(self, ref: str, *, metric: str, fix: str, device: torch.device, dtype: torch.dtype, image_size: int = IMAGE_SIZE):
        from transformers import AutoTokenizer, BlipForQuestionAnswering

        self.model = model_from_pretrained(BlipForQuestionAnswering, ref, metric=metric, what="BLIP VQA model", fix=fix)
        self.model.to(device=device, dtype=dtype).eval()
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, ref, metric=metric, what="BLIP tokenizer", fix=fix)
        # BLIP appends [DEC] (the decoder's start, config bos_token_id = 30522) and [ENC]
        # (the question encoder's first token, 30523) to BERT's 30,522 words; the hub
        # tokenizer is plain bert-base-uncased, so [ENC] is the id after [DEC] unless the
        # tokenizer names it.
        text_config = self.model.config.text_config
        vocab = self.tokenizer.get_vocab()
        self.dec_id = text_config.bos_token_id
        self.enc_id = vocab["[ENC]"] if "[ENC]" in vocab else (self.dec_id + 1 if self.dec_id is not None else None)
        self.yes_id, self.no_id = vocab.get("yes"), vocab.get("no")
        for token, token_id in (("[DEC]", self.dec_id), ("[ENC]", self.enc_id), ("yes", self.yes_id), ("no", self.no_id)):
            if token_id is None or not 0 <= token_id < text_config.vocab_size:
                raise LpoError(f"{metric}: the BLIP model/tokenizer at {ref!r} has no {token} token; {fix}")
        self.device, self.dtype, self.image_size = device, dtype, image_size

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        resized = [to_rgb(image).resize((self.image_size, self.image_size), Image.BICUBIC) for image in images]
        return to_pixel_values(resized).to(device=self.device, dtype=self.dtype)

    def yes_probability(self, images: Sequence[Image.Image], questions: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each image, P(yes) of each of its questions (an image may have none).

        Questions are batched only with questions of the same token length: no padding
        then reaches the decoder's cross-attention, which transformers 5's BLIP text model
        runs without the encoder mask (BlipTextAttention drops it), unlike BLIP's own.
        """
        flat = [(i, pre_question(q)) for i, qs in enumerate(questions) for q in qs]
        out: list[list[float]] = [[] for _ in questions]
        if not flat:
            return out
        ids = [
            self.tokenizer(q, truncation=True, max_length=MAX_QUESTION_TOKENS)["input_ids"] for _, q in flat
        ]
        pixel_values = self.pixel_values(images)
        probs: list[float] = [0.0] * len(flat)
        for length in sorted({len(x) for x in ids}):
            group = [k for k, x in enumerate(ids) if len(x) == length]
            input_ids = torch.tensor([ids[k] for k in group], dtype=torch.long, device=self.device)
            input_ids[:, 0] = self.enc_id
            values = yes_probability(
                self.model,
                pixel_values,
                input_ids,
                torch.ones_like(input_ids),
                image_index=torch.tensor([flat[k][0] for k in group], device=self.device),
                decoder_start_id=self.dec_id,
                yes_id=self.yes_id,
                no_id=self.no_id,
            ).tolist()
            for k, p in zip(group, values):
                probs[k] = p
        for (i, _), p in zip(flat, probs):
            out[i].append(p)
        return out


def official_round(value: float) -> float:
    """The official script stores each probability and product as ``'{:.4f}'`` text."""
    return float(f"{value:.4f}")


def phrase_product(probabilities: Sequence[float]) -> float:
    """T2I-CompBench++'s BLIP-VQA score of one image: the product of its questions' P(yes),
    each rounded to 4 decimals, the product rounded again (no question: 1)."""
    product = 1.0
    for p in probabilities:
        product *= official_round(p)
    return official_round(product)
