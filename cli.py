"""The repository's top-level entry point: ``python cli.py ARGS`` is ``lpo ARGS``.

The CLI itself is the package :mod:`lpo.cli` (``lpo/cli/``, one module per command
group); this file only launches it, so there is one module identity and no symlink.
"""

from lpo.cli import main

if __name__ == "__main__":
    main()
