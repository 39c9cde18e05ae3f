"""What every command module shares: the user-error wrapper, the console, the --set option.

A user mistake (``LpoError``) prints one red line and exits with status 2, with no
traceback; the wrapper is also where the composition root plugs the world in, before
every command.
"""

from __future__ import annotations

import functools
from typing import Callable

import typer

from lpo.core.errors import LpoError


def user_errors(fn: Callable) -> Callable:
    """Turn an LpoError into one red line and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import lpo
        import lpo.world

        lpo.quiet_libraries()
        lpo.world.install()  # the composition root plugs the world in (real-mode code never imports it)
        try:
            return fn(*args, **kwargs)
        except LpoError as err:
            from rich.console import Console

            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def stdout_console():
    """A rich console on stdout (imported lazily: ``lpo --help`` stays instant)."""
    from rich.console import Console

    return Console()


SET_OPTION = typer.Option([], "--set", help="Override a config value, e.g. --set unet_steps=500 (repeatable).")


def registry_help_command():
    """The click command class whose help fills in the registries' names ({checkpoints}, {benchmarks})."""
    from lpo.evals.cli_support import RegistryHelpCommand

    return RegistryHelpCommand
