"""The ``lpo`` command line (Typer), one module per command group.

Each command: arguments -> config -> one harness call -> rich output. Heavy imports
(torch, diffusers) happen inside commands so that ``lpo --help`` is instant. User
mistakes (``LpoError``) print one line and exit with status 2.

The console script is ``lpo.cli:main``; ``python -m lpo.cli`` (and ``accelerate launch
-m lpo.cli``) runs :mod:`lpo.cli.__main__`; the repository's root ``cli.py`` only
launches this package.
"""

from lpo.cli.root import app, main

__all__ = ["app", "main"]
