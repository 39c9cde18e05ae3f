"""lpo: preference optimisation of text-to-image diffusion models, evaluation first.

Import names: the repository's ``lpo/`` is ``lpo``, ``evals/`` is ``lpo.evals``,
``baselines/`` is ``lpo.baselines``; the CLI is ``lpo/cli/`` (``lpo.cli``), which the
root ``cli.py`` only launches.
"""

__version__ = "0.1.0"



def quiet_libraries() -> None:
    """Silence library chatter (weight-loading bars, torchvision fallbacks) for the CLI.

    Environment variables only, read by transformers / diffusers at import: cheap, and
    it must run before they are imported.
    """
    import os

    for key in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(key, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Already imported (tests, notebooks): tell the libraries directly.
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as df_logging

        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()
