"""What `lpo bench` runs: one dataclass, three presets, every value saved with the bench.

The quick preset is sized to finish in about ten minutes on two CPU cores: its pairs and
reward models come from a shipped reward kit (:mod:`lpo.bench.kit`, their measured cost
booked), its policies train shorter and its quality-vs-compute curve uses a subset of the
final evaluation's images. The full preset makes everything itself. The flow preset runs
the study on the flow-matching world from the U-Net world's pairs. Every method trains on
the same prompts (the captions of the training pairs), so the comparison spends the same
prompt budget; compute is what differs and what the efficiency view measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from lpo.bench.ablations import Ablation, ablation
from lpo.bench.kit import KIT_FIELDS
from lpo.core.errors import LpoError

METHODS = ("lpo", "spo", "diffusion-dpo")


def _f(default, help: str):
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BenchConfig:
    preset: str = _f("quick", "Name of the preset these values started from (recorded, not used).")
    model: str = _f("world", "World base model: world, world:PRESET, world-flow (the flow-matching world) or a world pipeline folder; a flow model trains with the *-world-flow trainer presets.")
    pair_model: str = _f("", "World model whose images the preference pairs are made of; empty: model. As Pick-a-Pic's images come from other models than the one a reward model is then trained for (LRM-SD3 learns from SD1.5/SDXL-era pairs), a flow bench may learn from the U-Net world's pairs.")
    pairs_from: str = _f("none", "A bench folder whose finished pairs and MPCF stages this bench copies instead of making them (none: make them). Its pair values (pair model, seed, prompts, pairs per prompt, sources, MPCF strategy) must equal this bench's; their measured cost is booked as this bench's.")
    seed: int = _f(0, "Seed of pair generation, of the reward models and of training seed 0 of every method.")
    seeds: int = _f(1, "Policy training seeds per method: seed i trains with seed + i in runs/METHOD/seed-i (seed 0 in runs/METHOD); reward models train once.")
    # data
    train_prompts: int = _f(300, "Training prompts (world train split) for the preference pairs.")
    pairs_per_prompt: int = _f(2, "Image pairs per training prompt.")
    reward_train_prompts: int = _f(0, "Training prompts of the reward models' pairs; 0: train_prompts. When larger, the pair pool holds reward_train_prompts × pairs_per_prompt pairs: the reward models train on all of it (after MPCF) and the policies (Diffusion-DPO's pairs, LPO's and SPO's prompts) on the MPCF-kept pairs of its first train_prompts prompts, as a reward model trained on all of Pick-a-Pic serves policies trained on part of it.")
    val_prompts: int = _f(86, "Validation prompts for the held-out reward-model accuracy (world val split).")
    val_pairs_per_prompt: int = _f(2, "Pairs per validation prompt.")
    pair_sources: str = _f("pickapic", "Generation settings the pairs' images come from: pickapic (a mix of guidance scales and schedules, as Pick-a-Pic mixes models) or single (CFG 5, 20 steps).")
    mpcf_strategy: str = _f("2", "MPCF strategy for the pairs every method trains on: none, 1, 2 or 3.")
    reward_kit: str = _f("none", "Where the pairs, MPCF, reward models and their accuracy table come from: none (the bench makes them) or a reward kit built with the same values (a shipped kit's name or a folder; lpo.bench.kit).")
    # reward models
    lrm_preset: str = _f("lrm-world", "Reward-training preset of the LRM.")
    lrm_overrides: tuple[str, ...] = _f((), "--set overrides of the LRM training.")
    pixel_preset: str = _f("spo-pixel-world", "Reward-training preset of SPO's pixel step model.")
    pixel_overrides: tuple[str, ...] = _f((), "--set overrides of the pixel model's training.")
    # policies
    methods: tuple[str, ...] = _f(METHODS, "Which trainers run (lpo, spo, diffusion-dpo).")
    lpo_overrides: tuple[str, ...] = _f((), "--set overrides of the lpo-world preset.")
    spo_overrides: tuple[str, ...] = _f((), "--set overrides of the spo-world preset.")
    dpo_overrides: tuple[str, ...] = _f((), "--set overrides of the dpo-world preset.")
    checkpoints_per_run: int = _f(4, "Intermediate checkpoints evaluated per run (for quality vs compute).")
    # evaluation
    eval_prompts: int = _f(64, "World test prompts per evaluation of the final models (round-robin over categories).")
    eval_images_per_prompt: int = _f(2, "Images per prompt per evaluation of the final models.")
    curve_prompts: int = _f(0, "Test prompts of the quality-vs-compute curve (base, every checkpoint, final models); 0: eval_prompts. Its images are the first of the final evaluation's, so final models and the base model cost nothing extra.")
    curve_images_per_prompt: int = _f(0, "Images per prompt of the quality-vs-compute curve; 0: eval_images_per_prompt.")
    eval_heldout: bool = _f(True, "Also evaluate final models on the held-out attribute combinations.")
    heldout_images_per_prompt: int = _f(0, "Images per held-out prompt; 0: eval_images_per_prompt.")
    guided_prompts: int = _f(32, "Test prompts of the LRM-guided sampling rows (0 skips them).")
    guided_seeds: int = _f(2, "Seeds per prompt of the guided-sampling rows.")
    guided_candidates: int = _f(4, "K of guided sampling and of best-of-K final images.")
    device: str = _f("auto", "auto, cpu or cuda.")
    ablations: tuple[str, ...] = _f((), "Ablations to run after the main bench: mpcf, vfe, lrm-t0, lpo-timesteps, spo-all-t, beta.")

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise LpoError(f"unknown bench methods {unknown or '(none)'}; choose from {', '.join(METHODS)}")
        from lpo.world.pairs import SOURCE_MIXES

        if self.pair_sources not in SOURCE_MIXES:
            raise LpoError(f"unknown pair_sources {self.pair_sources!r}; choose from {', '.join(SOURCE_MIXES)}")
        if self.mpcf_strategy not in ("none", "1", "2", "3"):
            raise LpoError(f"mpcf_strategy must be none, 1, 2 or 3, got {self.mpcf_strategy!r}")
        for name in ("train_prompts", "pairs_per_prompt", "val_prompts", "val_pairs_per_prompt", "eval_prompts",
                     "eval_images_per_prompt", "checkpoints_per_run", "guided_seeds", "seeds"):
            if getattr(self, name) < 1:
                raise LpoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reward_train_prompts and self.reward_train_prompts < self.train_prompts:
            raise LpoError(f"reward_train_prompts ({self.reward_train_prompts}) must be 0 or >= train_prompts "
                           f"({self.train_prompts}): the policies' pairs are a part of the reward models' pairs")
        for name in ("curve_prompts", "curve_images_per_prompt", "heldout_images_per_prompt"):
            if getattr(self, name) < 0:
                raise LpoError(f"{name} must be >= 0 (0: as the final evaluation), got {getattr(self, name)}")
        if self.curve_protocol()[0] > self.eval_prompts or self.curve_protocol()[1] > self.eval_images_per_prompt:
            raise LpoError("the curve's prompts and images per prompt must not exceed the final evaluation's "
                           "(its images are a subset of the final models' ones)")
        if self.guided_prompts < 0 or self.guided_candidates < 2:
            raise LpoError("guided_prompts must be >= 0 and guided_candidates >= 2")
        if self.reward_kit != "none" and self.pairs_from != "none":
            raise LpoError("reward_kit and pairs_from both supply the pairs; set one of them to none")
        for name in self.ablations:
            ablation(name)  # unknown name -> one-line error listing the known ones

    @property
    def pool_prompts(self) -> int:
        """Training prompts of the generated pair pool (the reward models' data)."""
        return max(self.reward_train_prompts, self.train_prompts)

    @property
    def separate_reward_pairs(self) -> bool:
        """Whether the reward models train on more pairs than the policies."""
        return self.pool_prompts > self.train_prompts

    @property
    def images_model(self) -> str:
        """The model the pairs' images come from."""
        return self.pair_model or self.model

    def curve_protocol(self) -> tuple[int, int]:
        """(prompts, images per prompt) of the quality-vs-compute curve."""
        return (self.curve_prompts or self.eval_prompts, self.curve_images_per_prompt or self.eval_images_per_prompt)

    @property
    def separate_curve(self) -> bool:
        """Whether the curve is evaluated on a smaller protocol than the final models."""
        return self.curve_protocol() != (self.eval_prompts, self.eval_images_per_prompt)

    def training_seed(self, index: int) -> int:
        """The policy training seed of seed index ``index`` (0 .. seeds - 1): ``seed + index``."""
        return self.seed + index

    def trainer_overrides(self, method: str) -> tuple[str, ...]:
        return {"lpo": self.lpo_overrides, "spo": self.spo_overrides, "diffusion-dpo": self.dpo_overrides}[method]


# Quick: ten minutes on two CPU cores. The reward models learn from a pool of 15,678 pairs
# (every one of the world's 5,226 train prompts × 3; results/world/study rows 7a-7b: the
# LRM reads the labels at 0.56 from 2,000 pairs and 0.62 from 17,844, so data is the lever)
# and both train 1,500 steps × 32 pairs (the same number of pairs seen). The policies train
# on the part of that pool that belongs to its first 1,000 prompts (Diffusion-DPO's pairs,
# LPO's and SPO's prompts). The pairs, MPCF, the reward models and their accuracy table
# come from the shipped reward kit "quick" (lpo.bench.kit; rebuilt by `lpo bench --build-kit
# DIR`), which books their measured cost; the kit holds the full preset's stages (the same
# values, the validation set included), so its accuracy table is the full preset's. The
# final models are evaluated on 320 test prompts × 2 images: world 1's bench showed
# LPO's gain over the base model varying across prompts with an SD of ~0.11 (prompt
# heterogeneity, not image noise: 128 prompts × 32 images would still give ±0.019), so
# the minimum detectable paired difference of 0.02 needs prompts (power analysis of the
# world-1 per-image records: ±0.02 needs ~260 prompts × 2 or ~190 × 4; per image generated,
# fewer images per prompt are cheaper, as long as the split has the prompts). The quality-vs-compute curve
# (one checkpoint halfway through each run) uses the first 48 × 2 of those images, the
# held-out combinations 1 image per prompt.
REWARD_DATA = dict(
    train_prompts=1000,
    pairs_per_prompt=3,
    reward_train_prompts=5226,
    val_prompts=86,
    val_pairs_per_prompt=14,
    lrm_overrides=("max_steps=1500",),
    pixel_overrides=("max_steps=1500",),
)
QUICK = BenchConfig(
    preset="quick",
    **REWARD_DATA,
    reward_kit="quick",
    eval_prompts=320,
    eval_images_per_prompt=2,
    curve_prompts=48,
    curve_images_per_prompt=2,
    heldout_images_per_prompt=1,
    checkpoints_per_run=1,
    guided_prompts=0,
    lpo_overrides=("train.max_rounds=16", "train.epochs=100"),  # max_rounds decides
    spo_overrides=("train.max_rounds=16", "train.epochs=100"),
    dpo_overrides=("train.max_steps=100",),
)
# Full: the quick preset's data and training, made from scratch (no reward kit) and
# repeated over 3 training seeds per method (a verdict needs the seed spread), judged on a
# validation set of ~1,050 decisive pairs (86 prompts × 14) and on all 850 test prompts × 2
# images per seed (pooled over the 3 seeds, the power analysis of world 1's records puts the
# paired half-width of LPO − base at ~0.0095; 0.01 is the target). World 1's full bench took
# about 86 min idle (results/bench-full-test128/COMMAND.md): pairs ~30 min, evaluations ~21 min.
FULL = BenchConfig(
    preset="full",
    **REWARD_DATA,
    eval_prompts=850,
    eval_images_per_prompt=2,
    curve_prompts=128,
    curve_images_per_prompt=2,
    heldout_images_per_prompt=2,
    checkpoints_per_run=2,
    guided_prompts=32,
    seeds=3,
    lpo_overrides=QUICK.lpo_overrides,
    spo_overrides=QUICK.spo_overrides,
    dpo_overrides=QUICK.dpo_overrides,
)
# Flow: LPO, SPO and Diffusion-DPO on the flow-matching world (world-flow, an SD3-style MMDiT
# pipeline on the U-Net world's VAE), side by side with the U-Net benches. The reward models
# learn from the U-Net world's pairs (pair_model=world), as LRM-SD3 learns from Pick-a-Pic's
# SD1.5/SDXL-era images, so the pairs, MPCF and the validation set are the full preset's
# and a bench folder of that preset can lend them (--set pairs_from=FULL_BENCH: 30 min of
# pair generation saved; without it this preset makes them). The LRM pools the image tokens
# after 3 of the flow world's 4 joint blocks (lrm-world-flow; the authors' LRM-SD3 uses 18 of
# SD3-medium's 24); the trainers run the *-world-flow presets (this project's values, not
# tuned), 3 training seeds each. Measured here (results/bench-flow/COMMAND.md; pairs lent by a
# full bench): LRM 993 s and pixel model 783 s (partly under load), accuracy table 482 s,
# training 38-70 s per run, final evaluations ~60 s per model; about an hour in all.
FLOW = replace(FULL, preset="flow", model="world-flow", pair_model="world", lrm_preset="lrm-world-flow",
               checkpoints_per_run=1, guided_prompts=0)
BENCH_PRESETS = {"quick": QUICK, "full": FULL, "flow": FLOW}


def variant_config(base: BenchConfig, ablation: Ablation, changes: dict[str, Any]) -> BenchConfig:
    """The main config with ``changes``: tuples extended, scalars replaced; only the
    ablation's methods, no guided rows, no held-out split, one intermediate checkpoint,
    one training seed; no reward kit when a change touches what the kit holds."""
    known = {f.name for f in fields(base)}
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in known:
            raise ValueError(f"ablation {ablation.name}: {key!r} is not a BenchConfig field")
        current = getattr(base, key)
        values[key] = tuple(current) + tuple(value) if isinstance(current, tuple) else value
    if any(key in KIT_FIELDS for key in changes):  # other pairs or reward models than the kit's: make them
        values["reward_kit"] = "none"
    return replace(base, **values, methods=ablation.methods, guided_prompts=0, eval_heldout=False,
                   checkpoints_per_run=1, ablations=(), seeds=1)


def bench_preset(name: str) -> BenchConfig:
    try:
        return replace(BENCH_PRESETS[name])
    except KeyError:
        raise LpoError(f"unknown bench preset {name!r}; known: {', '.join(BENCH_PRESETS)}") from None
