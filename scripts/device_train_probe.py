"""Real-mode trainer probe: LPO and SPO rounds at SD1.5 architecture size with random weights.

Builds a random SD1.5-sized pipeline (and a random LRM and a PickScore-sized pixel model
on it), saves them as folders, and runs `lpo train` (the same run_training the CLI calls)
with the published lpo-sd15 / spo-sd15 presets for a couple of rounds. Prints seconds per
round, kept pairs and peak GPU memory, and writes OUT/train_probe.json. Nothing is
downloaded. On a CPU pass ``--tiny`` (tests/tiny_models' pipeline) to check the script.

    python scripts/device_train_probe.py OUT [--tiny] [--rounds N]
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch


def _shrink_vocab(clip, size: int) -> None:
    """Keep the first ``size`` rows of a CLIPModel's token embedding (CLIPModel has no resize)."""
    embeddings = clip.text_model.embeddings
    old = embeddings.token_embedding
    new = torch.nn.Embedding(size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    new.weight.data.copy_(old.weight.data[:size])
    embeddings.token_embedding = new
    clip.config.text_config.vocab_size = size


def build_folders(root: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[Path, Path, Path]:
    from diffusers import StableDiffusionPipeline

    from lpo.reward.lrm import LatentRewardModel
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components
    from lpo.reward.pixel import PixelStepReward
    from lpo.reward.pixel_io import save_pixel_reward
    from lpo.reward.pixel_scorer import world_pixel_scorer

    pipe_dir = root / "pipeline"
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import tiny_sd15_pipeline

        pipe_dir = tiny_sd15_pipeline(pipe_dir)
    else:
        from lpo.perf.architectures import random_components

        c = random_components("sd15", device=device, dtype=dtype)
        # the world BPE stands in for CLIP's tokenizer; a saved pipeline must agree with it
        c.text_encoder.resize_token_embeddings(len(c.tokenizer))
        StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).save_pretrained(pipe_dir)
        del c
    components = load_components(pipe_dir, dtype=dtype, device=device)
    lrm = LatentRewardModel.from_components(components)
    lrm_dir = save_lrm(lrm, root / "lrm")
    if tiny:
        scorer = world_pixel_scorer(components.tokenizer)
    else:
        from lpo.perf.architectures import random_pickscore_scorer

        scorer = random_pickscore_scorer(device=device, dtype=torch.float32)
        _shrink_vocab(scorer.clip, len(scorer.tokenizer))  # world BPE for CLIP's, as above
    pixel = PixelStepReward.from_components(components, scorer)
    pixel_dir = save_pixel_reward(pixel, root / "pixel")
    del components, lrm, pixel, scorer
    return Path(pipe_dir), Path(lrm_dir), Path(pixel_dir)


def main() -> None:
    out = Path(sys.argv[1])
    tiny = "--tiny" in sys.argv
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 2
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/lpo-train-probe")
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    report: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "tiny": tiny, "runs": [], "errors": []}

    start = time.perf_counter()
    pipe_dir, lrm_dir, pixel_dir = build_folders(work, tiny, device, dtype)
    report["build_seconds"] = time.perf_counter() - start
    prompts = work / "prompts.txt"
    from lpo.world.grammar import make_splits

    prompts.write_text("\n".join(s.text() for s in make_splits().train[:40]) + "\n")

    from lpo.trainers.jobs import run_training

    for method, reward in (("lpo", lrm_dir), ("spo", pixel_dir)):
        preset = f"{method}-sd15"
        overrides = [f"model.base={pipe_dir}", f"reward.path={reward}", f"train.prompts={prompts}",
                     f"train.max_rounds={rounds}", "run.save_every=0", "run.trackers=none",
                     # a cost probe: keep every pair so the training pass runs at full size
                     # (a random LRM's candidates never clear the published thresholds)
                     "sampler.threshold_min=0", "sampler.threshold_max=0"]
        if not cuda:
            overrides += ["model.dtype=fp32", "optim.mixed_precision=no"]
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            result = run_training(method, preset, overrides, run_dir=work / f"run-{method}")
            entry = {
                "method": method, "preset": preset, "rounds": result.steps, "optimizer_steps": result.optimizer_steps,
                "wall_seconds": time.perf_counter() - began,
                "round_seconds": [row.get("seconds") for row in result.history],
                "kept": [row.get("kept") for row in result.history],
                "branched": [row.get("branched") for row in result.history],
                "loss": [row.get("loss") for row in result.history],
                "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
                "cost": result.cost,
            }
            print(json.dumps({k: v for k, v in entry.items() if k != "cost"}))
            report["runs"].append(entry)
        except Exception as err:  # report and go on to the next method
            traceback.print_exc()
            report["errors"].append(f"{method}: {err!r}")
        (out / "train_probe.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
