import numpy as np, sys
from lpo.pairs.format import PreferencePair, save_pairs
from lpo.world.grammar import make_splits
from lpo.world.render import render_prompt
rng = np.random.default_rng(0)
splits = make_splits()
def build(specs, n, path):
    pairs = []
    for i in range(n):
        s = specs[i % len(specs)]; o = specs[(i * 7 + 3) % len(specs)]
        good, bad = render_prompt(s, rng), render_prompt(o, rng)
        if rng.random() < 0.5:
            pairs.append(PreferencePair(f"e{i}", s.text(), good, bad, 1.0, "easy"))
        else:
            pairs.append(PreferencePair(f"e{i}", s.text(), bad, good, 0.0, "easy"))
    save_pairs(pairs, path)
build(splits.train, 3000, "train.parquet")
build(splits.val, 172, "val.parquet")
