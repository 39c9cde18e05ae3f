"""The embedded synthetic text-to-image world (SPEC §2).

grammar.py     prompt vocabulary, structured prompt specs, text <-> spec, splits
render.py      procedural renderer of ground-truth images
judges.py      exact judges on decoded RGB images (segmentation + scores)
annotators.py  simulated Bradley–Terry annotators with biases and ties
tokenizer.py   a CLIP BPE tokenizer built from the grammar's words
pretrain.py    the tiny latent diffusion model, trained and saved as a pipeline folder
plugin.py      what the world plugs into real-mode registries; install() plugs it in

Real-mode code never imports this package: call :func:`install` once (the CLI, the tests'
conftest and the scripts do) and the ``world`` model alias and the world's MPCF gap
scorers become available through lpo's registries.
"""


def install() -> None:
    """Register the world into lpo's registries (idempotent); see :mod:`lpo.world.plugin`."""
    from lpo.world.plugin import install as _install

    _install()
