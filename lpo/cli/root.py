"""The root ``lpo`` Typer app: every command and group in the order ``lpo --help`` lists
them, ``lpo version``, ``lpo env`` and :func:`main`, the console script's entry point.

Commands live in one module per group (:mod:`lpo.cli.world`, :mod:`lpo.cli.generate`,
:mod:`lpo.cli.reward`, :mod:`lpo.cli.bench`, :mod:`lpo.cli.evaluate`,
:mod:`lpo.cli.train`, :mod:`lpo.cli.perf`, :mod:`lpo.cli.data`); they are registered here, explicitly, so the
list of commands can be read in one place.
"""

from __future__ import annotations

import json

import typer

from lpo.cli.bench import bench
from lpo.cli.common import registry_help_command, user_errors
from lpo.cli.convert import convert_app
from lpo.cli.data import data_app
from lpo.cli.doctor import doctor_command
from lpo.cli.evaluate import compare_command, eval_command, leaderboard_command, list_app
from lpo.cli.generate import pairs, sample
from lpo.cli.perf import perf_app
from lpo.cli.reward import lrm_app, mpcf
from lpo.cli.train import train_command
from lpo.cli.world import world_app
from lpo.core.errors import LpoError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="lpo: preference optimisation of text-to-image diffusion models (LPO, SPO, Diffusion-DPO), evaluation first.",
)


@user_errors
def version() -> None:
    """Print the lpo version."""
    import lpo

    typer.echo(lpo.__version__)


@user_errors
def env_command() -> None:
    """Print what every run records about this machine: versions, CPU model, CPU kernels, threads (JSON)."""
    from lpo.core.io import hardware, package_versions

    typer.echo(json.dumps({"versions": package_versions(), "hardware": hardware()}, indent=2))


# Typer lists commands in the order they are registered, then the groups.
app.command("version")(version)
app.command("env")(env_command)
app.command("sample")(sample)
app.command("pairs")(pairs)
app.command("mpcf")(mpcf)
app.command("bench")(bench)
app.command("eval", cls=registry_help_command())(eval_command)
app.command("compare", cls=registry_help_command())(compare_command)
app.command("leaderboard", cls=registry_help_command())(leaderboard_command)
app.command("train")(train_command)
app.command("doctor")(doctor_command)
app.add_typer(world_app, name="world")
app.add_typer(lrm_app, name="lrm")
app.add_typer(perf_app, name="perf")
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")
app.add_typer(list_app, name="list")


def main() -> None:
    """The ``lpo`` entry point: pin the CPU kernels (:mod:`lpo.core.cpu_dispatch`) before torch loads, then run."""
    from lpo.core.cpu_dispatch import pin

    try:
        pin()
    except LpoError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    app()
