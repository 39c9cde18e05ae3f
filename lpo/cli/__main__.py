"""``python -m lpo.cli`` (and ``accelerate launch -m lpo.cli``): the same as the ``lpo`` console script."""

from lpo.cli.root import main

if __name__ == "__main__":
    main()
