"""SPO's step-aware preference scorer: a CLIP whose vision tower is conditioned on t (SPEC §4.3).

====================  ==================================================================
I, T                  ``TimestepConditionedScorer.encode_images`` / ``encode_text`` (B, P)
score(image, t, p)    exp(logit_scale)·cos(I(image, t), T(p)), PickScore's formula
====================  ==================================================================

The scorer (:class:`TimestepConditionedScorer`) is a transformers ``CLIPModel`` left
completely intact (its state-dict keys are the official ones under ``clip.``), plus a time
embedding and AdaLN modules (:mod:`lpo.reward.time_conditioning`) attached with forward hooks on
its *vision* encoder layers. All AdaLN maps are zero-initialised, so at initialisation the
scorer *is* the plain CLIP model (SPO starts from PickScore). Outside a scoring call (e.g.
``scorer.clip`` used directly) the hooks do nothing. Gradient checkpointing of the vision
tower is refused: its backward recomputation would run outside the call and drop the AdaLN.
Images are preprocessed differentiably by :mod:`lpo.reward.clip_preprocess`.

Two ways to build a scorer:

- real mode, :meth:`TimestepConditionedScorer.from_clip_pretrained`: any ``CLIPModel``
  folder or hub id, e.g. PickScore ``yuvalkirstain/PickScore_v1`` with the processor
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (tokenizer and ``preprocessor_config.json``).
- world, :func:`world_pixel_scorer`: there is no PickScore for the embedded world, so a
  small randomly initialised CLIP (vision ViT on 32×32 images, patch 4, width 64, 3 layers;
  text transformer width 64 on the world's grammar tokenizer) is trained from scratch on
  the world's preference pairs. Its text tower can optionally start from the world
  pipeline's own text encoder.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.reward.clip_preprocess import ImagePreprocessConfig, preprocess_images
from lpo.core.errors import LpoError
from lpo.core.io import one_line
from lpo.reward.time_conditioning import AdaLNConfig, EncoderLayerAdaLN, PooledAdaLN, TimestepEmbedding

# SPEC §4.3 / §6.1: the paper initialises the step-aware model from PickScore.
from lpo.reward.config import PICKSCORE_MODEL_ID, PICKSCORE_PROCESSOR_ID  # noqa: F401  (re-exported)


@dataclass
class WorldScorerConfig:
    """Architecture of the world's step-aware scorer (:func:`world_pixel_scorer`), trained from scratch.

    Vision: a ViT for 32×32 images with 4×4 patches (64 patches + CLS), width 64, 3 layers.
    Text: a CLIP text transformer of width 64 on the world tokenizer (ignored when the
    text tower is copied from a text encoder). Preprocessing: resize/crop to
    ``image_size``, mean = std = 0.5, so the pixel values are the decoded image in [-1, 1].
    """

    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    projection_dim: int = 64
    logit_scale_init: float = 2.6592  # log(1/0.07), CLIP's init

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        towers = ((self.hidden_size, self.num_heads, ""), (self.text_hidden_size, self.text_heads, "text_"))
        for width, heads, what in towers:
            if width % heads:
                raise ValueError(f"{what}hidden_size {width} must be divisible by {what}heads {heads}")


# --------------------------------------------------------------------------- loading helpers


def load_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, EntryNotFoundError, SafetensorError)


def guarded_load(load: Any, what: str, hint: str) -> Any:
    try:
        return load()
    except load_errors() as err:
        raise LpoError(f"could not load {what} ({one_line(err)}); {hint}") from err


def _read_processor_dict(processor: str | Path) -> dict[str, Any] | None:
    """``preprocessor_config.json`` of a folder or hub id as a dict; None when there is none."""
    name = "preprocessor_config.json"
    path = Path(processor).expanduser()
    if path.is_dir():
        file = path / name
        if not file.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            file = Path(hf_hub_download(str(processor), name))
        except EntryNotFoundError:
            return None
        except load_errors() as err:
            raise LpoError(
                f"could not get {name} of {processor} ({one_line(err)}); pass a local processor folder "
                "or allow hub access"
            ) from err
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {file} ({one_line(err)}); re-save the processor") from err
    if not isinstance(data, dict):
        raise LpoError(f"{file} is not a JSON object; re-save the processor")
    return data



def as_timesteps(timesteps: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """(B,) long timesteps from an int, a 0-d / 1-element tensor or a (B,) tensor."""
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.is_floating_point():
        raise ValueError(f"timesteps must be integers (training timesteps 0..T−1), got dtype {timesteps.dtype}")
    timesteps = timesteps.long().reshape(-1)
    if timesteps.numel() == 1:
        return timesteps.expand(batch)
    if timesteps.numel() != batch:
        raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {batch}; pass one or one per sample")
    return timesteps


def prompt_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    return prompts


class TimestepConditionedScorer(nn.Module):
    """SPO's step-aware preference model: a CLIP whose vision tower is conditioned on t.

    score(image, t, prompt) = exp(logit_scale)·cos(visual_projection(pooled(image, t)),
    text_projection(pooled(prompt))), exactly PickScore's formula; at initialisation (zero
    AdaLN) it equals the wrapped ``CLIPModel`` for every t.

    clip: a transformers ``CLIPModel`` (kept intact: official weights load unchanged).
    tokenizer: its CLIP tokenizer.
    preprocess: how images in [-1, 1] become its pixel values; the output must be the
        vision tower's ``image_size`` square.
    source: where the CLIP weights came from (hub id / folder, or "random"), for the record.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        preprocess: ImagePreprocessConfig,
        adaln: AdaLNConfig | None = None,
        *,
        source: str = "random",
    ) -> None:
        super().__init__()
        vision_config = clip.config.vision_config
        side = int(vision_config.image_size)
        probe = preprocess.output_size(side, side)
        if preprocess.crop_size is None and preprocess.size is None:
            raise ValueError(
                "preprocess needs crop_size or an exact size: a shortest-edge resize alone gives "
                f"non-square pixel values for non-square images, and the vision tower takes {side}×{side}"
            )
        if tuple(probe) != (side, side):
            raise ValueError(
                f"preprocess produces {probe[0]}×{probe[1]} pixel values but the vision tower takes "
                f"{side}×{side}; set the crop (or size) to {side}"
            )
        self.clip = clip
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess
        self.adaln_config = adaln or AdaLNConfig()
        self.source = str(source)
        hidden = int(vision_config.hidden_size)
        vision = clip.vision_model
        layers = vision.encoder.layers
        param = next(clip.parameters())
        self.time_embedding = TimestepEmbedding(hidden, self.adaln_config)
        self.layer_adaln = nn.ModuleList(EncoderLayerAdaLN(hidden) for _ in layers)
        self.pooled_adaln = PooledAdaLN(hidden)
        for module in (self.time_embedding, self.layer_adaln, self.pooled_adaln):
            module.to(device=param.device, dtype=param.dtype)
        for adaln_module, layer in zip(self.layer_adaln, layers):
            adaln_module.attach(layer)
        self.pooled_adaln.attach(vision.post_layernorm)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_clip_pretrained(
        cls,
        model: str | Path,
        processor: str | Path | None = None,
        *,
        adaln: AdaLNConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "TimestepConditionedScorer":
        """Wrap ``CLIPModel.from_pretrained(model)`` (e.g. PickScore) with zero-initialised AdaLN.

        ``processor`` (default ``model``) holds the tokenizer and, when present,
        ``preprocessor_config.json`` (a ``CLIPImageProcessor`` config: size, crop, mean,
        std); without one, CLIP's defaults at the vision tower's ``image_size`` are used.
        For PickScore: ``from_clip_pretrained(PICKSCORE_MODEL_ID, PICKSCORE_PROCESSOR_ID)``.
        Returned in eval mode; call ``.train()`` to train it.
        """
        from transformers import CLIPModel, CLIPTokenizer

        processor = model if processor is None else processor
        hint = (f"allow hub access or fetch {model} (and {processor}) into the Hugging Face cache with `hf download` "
                "or point the run at local copies: --set pixel_scorer=FOLDER --set pixel_scorer_processor=FOLDER")
        clip = guarded_load(
            lambda: CLIPModel.from_pretrained(str(model), dtype=dtype), f"CLIPModel from {model}", hint
        )
        tokenizer = guarded_load(
            lambda: CLIPTokenizer.from_pretrained(str(processor)), f"the CLIP tokenizer from {processor}", hint
        )
        processor_dict = _read_processor_dict(processor)
        side = int(clip.config.vision_config.image_size)
        if processor_dict is None:
            preprocess = ImagePreprocessConfig(shortest_edge=side, crop_size=(side, side))
        else:
            try:
                preprocess = ImagePreprocessConfig.from_processor_dict(processor_dict)
            except ValueError as err:
                raise LpoError(f"the image processor config of {processor} cannot be reproduced: {err}") from err
        return cls(clip, tokenizer, preprocess, adaln, source=str(model)).to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.logit_scale.dtype

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    def describe(self) -> dict[str, Any]:
        """The architecture as JSON-able data (what :func:`load_pixel_reward` rebuilds from)."""
        return {
            "class": type(self.clip).__name__,
            "clip_config": self.clip.config.to_dict(),
            "adaln": asdict(self.adaln_config),
            "preprocess": asdict(self.preprocess_config),
            "source": self.source,
        }

    # ----------------------------------------------------------------- towers

    def _max_length(self) -> int:
        return min(int(self.tokenizer.model_max_length), int(self.clip.config.text_config.max_position_embeddings))

    def encode_text(self, prompts: str | Sequence[str]) -> Tensor:
        """(B, P) text embeddings T (projected, not normalised), with gradients."""
        input_ids = self.tokenizer(
            prompt_list(prompts),
            padding="max_length",
            max_length=self._max_length(),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        pooled = self.clip.text_model(input_ids=input_ids).pooler_output
        return self.clip.text_projection(pooled)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, 3, S, S) pixel values in the scorer's dtype."""
        return preprocess_images(images.to(self.device), self.preprocess_config).to(self.dtype)

    @contextmanager
    def _conditioned_on(self, timesteps: Tensor) -> Iterator[None]:
        """Set every AdaLN's modulation for ``timesteps`` (B,) for the duration of one forward."""
        encoder = self.clip.vision_model.encoder
        if any(getattr(m, "gradient_checkpointing", False) for m in (encoder, *encoder.layers)):
            raise ValueError(
                "gradient checkpointing is on in the scorer's CLIP model: its backward recomputation would run "
                "without the AdaLN hooks' modulation; call scorer.clip.gradient_checkpointing_disable()"
            )
        time_embedding = self.time_embedding(timesteps)  # (B, D)
        modules = [*self.layer_adaln, self.pooled_adaln]
        try:
            for module in modules:
                module.condition(time_embedding)
            yield
        finally:
            for module in modules:
                module.condition(None)

    def encode_images(self, images: Tensor, timesteps: Tensor | int) -> Tensor:
        """(B, P) image embeddings I(image, t) of images in [-1, 1] at timesteps t (int or (B,))."""
        pixel_values = self.preprocess(images)
        timesteps = as_timesteps(timesteps, pixel_values.shape[0], self.device)
        with self._conditioned_on(timesteps):
            pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output  # (B, D), AdaLN applied
        return self.clip.visual_projection(pooled)

    def score(self, images: Tensor, timesteps: Tensor | int, text: str | Sequence[str] | Tensor) -> Tensor:
        """(B,) float32 exp(logit_scale)·cos(I(image, t), T(prompt)); ``text`` prompts or (B, P) embeddings."""
        text_embeds = text if torch.is_tensor(text) else self.encode_text(text)
        if text_embeds.shape[0] != images.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but text for {text_embeds.shape[0]} prompts; pass one per image"
            )
        image_embeds = self.encode_images(images, timesteps)
        cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float().to(image_embeds.device), dim=-1)
        return self.clip.logit_scale.float().exp() * cosine

    def forward(self, images: Tensor, timesteps: Tensor | int, prompts: str | Sequence[str] | Tensor) -> Tensor:
        return self.score(images, timesteps, prompts)


def world_pixel_scorer(
    tokenizer: Any,
    config: WorldScorerConfig | None = None,
    *,
    text_encoder: nn.Module | None = None,
    adaln: AdaLNConfig | None = None,
    seed: int = 0,
) -> TimestepConditionedScorer:
    """A randomly initialised step-aware scorer for the embedded world (there is no PickScore).

    tokenizer: the world pipeline's tokenizer (``components.tokenizer``), so prompts
        tokenize exactly as the diffusion model's.
    text_encoder: optionally a ``CLIPTextModel`` (e.g. the world pipeline's own) whose
        architecture and weights the text tower copies; by default the text tower is a
        fresh ``CLIPTextModel`` of ``config``'s width.
    seed: the initialisation seed (the global RNG is left untouched).
    Returned in eval mode, like a loaded model; call ``.train()`` to train it.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    config = config or WorldScorerConfig()
    if text_encoder is not None:
        text_config = CLIPTextConfig.from_dict(text_encoder.config.to_dict())
    else:
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_intermediate_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=min(int(tokenizer.model_max_length), 77),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # pooled output at the first EOS
            pad_token_id=tokenizer.pad_token_id,
        )
    vision_config = CLIPVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
    )
    clip_config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init,
    )
    side = config.image_size
    preprocess = ImagePreprocessConfig(
        shortest_edge=side, crop_size=(side, side), image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(clip_config)
        scorer = TimestepConditionedScorer(clip, tokenizer, preprocess, adaln, source="random")
    if text_encoder is not None:
        scorer.clip.text_model.load_state_dict(text_encoder.state_dict())
        scorer.source = "random (text tower from the world text encoder)"
    return scorer.eval()
