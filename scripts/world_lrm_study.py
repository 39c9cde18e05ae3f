"""World study: which levers let a latent reward model learn the world's preference?

Step 1 (``pool``): generate and save an image pool once per source mix — train-split
pairs and val-split pairs (val prompts only are used to decide anything), both images of
each pair judged. Step 2 (``run``): label the pool with an annotator pool under a judge
version, train an LRM with the ``lrm-world`` preset on the train pairs, and measure its
held-out accuracy at fixed t against the annotators' labels and against the true-utility
order, beside the true utility of the decoded one-step x̂0 (the pixel ceiling).

``stability``: how often an imperceptible VAE round trip (decode of the posterior mean)
reverses the judged order of a pool's pairs — a bound on what any latent model can read.

Everything is seeded; the commands that produced results/world/study/ are in its README.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lpo.sampling.generate import load_pipeline
from lpo.pairs.format import PreferencePair
from lpo.world.annotators import AnnotatorPoolConfig, label_pairs
from lpo.world.pairs import SOURCE_MIXES, WorldPairsConfig, generate_world_pairs, true_order_labels

EVAL_T = (1, 51, 101, 151, 201, 251, 501, 751, 951)


def make_pool(args) -> None:
    pipe, _ = load_pipeline(args.model, device="cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, prompts, per, seed in (("val", 86, args.val_pairs, 1), ("train", args.train_prompts, args.train_pairs, 0)):
        t0 = time.time()
        config = WorldPairsConfig(num_prompts=prompts, pairs_per_prompt=per, seed=seed, prompt_split=split,
                                  sources=SOURCE_MIXES[args.sources])
        output = generate_world_pairs(args.model, config, pipeline=pipe)
        np.savez_compressed(
            out / f"{split}.npz",
            image_0=np.stack([p.image_0 for p in output.pairs]), image_1=np.stack([p.image_1 for p in output.pairs]),
            prompts=np.array([p.prompt for p in output.pairs]), sources=output.sources,
        )
        print(f"{split}: {len(output.pairs)} pairs in {time.time() - t0:.0f} s", flush=True)


def load_judges(spec: str):
    if spec.endswith(".py"):  # an older judges module, e.g. `git show REV:lpo/world/judges.py`
        module_spec = importlib.util.spec_from_file_location("judges_alt", spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses look their module up
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def labelled(pool: dict, judges, annotators: AnnotatorPoolConfig, seed: int) -> list[PreferencePair]:
    prompts = [str(p) for p in pool["prompts"]]
    scores_0 = [judges.judge(im, p) for im, p in zip(pool["image_0"], prompts)]
    scores_1 = [judges.judge(im, p) for im, p in zip(pool["image_1"], prompts)]
    labels = label_pairs(scores_0, scores_1, annotators, seed=seed)
    return [
        PreferencePair(f"study-{n:06d}", prompt, a, b, 1.0 - lab.label, "world", annotator_kind=lab.annotator_kind)
        for n, (prompt, a, b, lab) in enumerate(zip(prompts, pool["image_0"], pool["image_1"], labels))
    ]


def run(args) -> None:
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.models.components import load_components
    from lpo.sampling.generate import resolve_model_name
    from lpo.reward.config import reward_training_preset
    from lpo.reward.data import encode_pairs
    from lpo.reward.jobs import noise_ensembles
    from lpo.reward.training import accuracy_from_scores, pair_scores_by_timestep_many, train_step_reward
    from lpo.world.utility_reward import WorldUtilityOnX0

    torch.manual_seed(0)
    pool_dir = Path(args.pool)
    judges = load_judges(args.judges)
    annotators = AnnotatorPoolConfig(
        temperature_range=tuple(args.temperature), kind_weights=tuple(args.kind_weights), tie_margin=args.tie_margin,
    )
    train_pool, val_pool = (dict(np.load(pool_dir / f"{s}.npz")) for s in ("train", "val"))
    if args.max_train_pairs:
        train_pool = {k: v[: args.max_train_pairs] for k, v in train_pool.items()}
    train_pairs = labelled(train_pool, judges, annotators, seed=0)
    val_pairs = labelled(val_pool, judges, annotators, seed=1)
    if args.labels == "truth":  # noise-free labels: the true-utility order
        train_pairs = [replace(p, label_0=l) for p, l in zip(train_pairs, true_order_labels(train_pairs, judges.judge))]
    if args.mpcf != "none":  # the bench's filter: the world MPCF preset at this strategy
        from lpo.pairs.mpcf import build_gap_scorers, compute_gap_scores, filter_pairs, mpcf_preset

        mpcf = replace(mpcf_preset("world"), strategy=args.mpcf)
        scores = compute_gap_scores(train_pairs, build_gap_scorers(mpcf), Path(args.out).parent / ".mpcf-scores")
        kept = filter_pairs(train_pairs, mpcf, scores).pairs
        print(f"MPCF strategy {args.mpcf}: {len(kept)} of {len(train_pairs)} train pairs kept", flush=True)
        train_pairs = kept

    components = load_components(resolve_model_name(args.model))
    val_enc = encode_pairs(components, val_pairs)
    truth = torch.tensor(true_order_labels(val_pairs, judges.judge), dtype=torch.float32)
    agree_mask = (val_enc.labels_0 != 0.5) & (truth != 0.5)
    agreement = float((val_enc.labels_0[agree_mask] == truth[agree_mask]).float().mean())
    result = {"args": vars(args), "val_pairs": len(val_pairs), "val_decisive": int((val_enc.labels_0 != 0.5).sum()),
              "label_vs_truth_agreement": agreement, "accuracy": {}}
    print(json.dumps({k: v for k, v in result.items() if k != "accuracy"}), flush=True)

    config = reward_training_preset("lrm-world")
    for item in args.set or []:
        key, value = item.split("=", 1)
        config = replace(config, **{key: type(getattr(config, key))(value)})
    config = replace(config, save_every=0, eval_every=0)
    lrm = LatentRewardModel.from_components(components, LRMConfig(vfe_scale=config.vfe_scale, head=config.lrm_head))
    t0 = time.time()
    train_step_reward(lrm, components, train_pairs, config)
    result["lrm_train_seconds"] = time.time() - t0

    scorers = {"lrm": lrm}
    if args.ceiling:
        scorers["utility_x0"] = WorldUtilityOnX0(components)
    for scorer in scorers.values():
        scorer.eval()
    # every scorer on the same x_t (the eval job's scoring), then per-t accuracy and the
    # test-time noise ensembles (scores averaged over a band of t before the pair is judged)
    all_scores = pair_scores_by_timestep_many(scorers, components, val_enc, EVAL_T, seed=0)
    result["ensembles"] = {}
    for name, scores in all_scores.items():
        for target, labels in (("labels", val_enc.labels_0), ("truth", truth)):
            acc = {t: accuracy_from_scores(s0, s1, labels) for t, (s0, s1) in scores.items()}
            result["accuracy"][f"{name}/{target}"] = {int(t): [a, n] for t, (a, n) in acc.items()}
            result["ensembles"][f"{name}/{target}"] = noise_ensembles(scores, labels)
            low = np.mean([acc[t][0] for t in EVAL_T if t <= 251])
            ens = result["ensembles"][f"{name}/{target}"]["t<=251"][0]
            print(f"{name} vs {target}: mean t<=251 {low:.3f} (ensemble {ens:.3f}) | "
                  + " ".join(f"{t}:{acc[t][0]:.3f}" for t in EVAL_T), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def stability(args) -> None:
    from lpo.models.components import load_components
    from lpo.sampling.generate import resolve_model_name

    components = load_components(resolve_model_name("world"))
    pool = dict(np.load(Path(args.pool) / "val.npz"))
    prompts = [str(p) for p in pool["prompts"]]
    result = {}
    for name in args.judges:
        judges = load_judges(name)
        rows = {}
        for side in ("image_0", "image_1"):
            images = torch.from_numpy(pool[side]).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                decoded = components.vae.decode(components.vae.encode(images).latent_dist.mean).sample
            decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            rows[side] = [(judges.judge(a, p), judges.judge(b, p)) for a, b, p in zip(pool[side], decoded, prompts)]
        for key in ("utility", "soft_alignment", "aesthetic"):
            get = lambda side, k: np.array([getattr(r[k], key) for r in rows[side]])  # noqa: E731
            gap, gap_rt = get("image_0", 0) - get("image_1", 0), get("image_0", 1) - get("image_1", 1)
            decisive = np.abs(gap) > 0.05
            result[f"{name}/{key}"] = {
                "order_kept": float((np.sign(gap) == np.sign(gap_rt))[decisive].mean()), "pairs": int(decisive.sum()),
                "gap_correlation": float(np.corrcoef(gap, gap_rt)[0, 1]),
            }
            print(name, key, result[f"{name}/{key}"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool")
    p.add_argument("--out", required=True)
    p.add_argument("--sources", choices=sorted(SOURCE_MIXES), default="pickapic")
    p.add_argument("--train-prompts", type=int, default=1000)
    p.add_argument("--train-pairs", type=int, default=2)
    p.add_argument("--val-pairs", type=int, default=6)
    p.add_argument("--model", default="world", help="world, world:PRESET or a world pipeline folder")
    r = sub.add_parser("run")
    r.add_argument("--pool", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--judges", default="lpo.world.judges")
    r.add_argument("--temperature", type=float, nargs=2, default=(0.03, 0.15))
    r.add_argument("--kind-weights", type=float, nargs=3, default=(0.6, 0.25, 0.15))
    r.add_argument("--tie-margin", type=float, default=0.03)
    r.add_argument("--labels", choices=("annotators", "truth"), default="annotators")
    r.add_argument("--ceiling", action="store_true")
    r.add_argument("--set", action="append")
    r.add_argument("--model", default="world", help="the world model whose U-Net the LRM is built from")
    r.add_argument("--max-train-pairs", type=int, default=None, help="train on the first N pairs of the pool")
    r.add_argument("--mpcf", choices=("none", "1", "2", "3"), default="none", help="filter the train pairs as the bench does")
    st = sub.add_parser("stability")
    st.add_argument("--pool", required=True)
    st.add_argument("--out", required=True)
    st.add_argument("--judges", nargs="+", default=["lpo.world.judges"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from lpo.world import install

    install()  # the `world` model alias
    {"pool": make_pool, "run": run, "stability": stability}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
