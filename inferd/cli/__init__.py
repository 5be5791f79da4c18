"""The `inferd` command: devices, prepare, convert, info, compile, optimize, predict, bench, serve, deploy, export, cache.

Each command group lives in its own module and computes; `inferd.cli.render` prints. This module only assembles
the commands, in the order `inferd --help` lists them.
"""

from __future__ import annotations

import sys

import typer

from inferd.cli import bench, devices, loadtest, models, render, serve, top
from inferd.cli.cache import cache_app
from inferd.cli.deploy import deploy_app
from inferd.cli.export import export_app
from inferd.errors import InferdError

app = typer.Typer(
    help="Convert, compress, compile and serve trained models on any machine.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.command()(devices.devices)
app.command()(devices.prepare)
app.command()(models.convert)
app.command()(models.info)
app.command("compile")(models.compile_)
app.command()(models.optimize)
app.command()(models.predict)
app.command()(bench.bench)
app.command()(serve.serve)
app.command()(top.top)
app.command()(loadtest.loadtest)
app.add_typer(deploy_app, name="deploy")
app.add_typer(export_app, name="export")
app.add_typer(cache_app, name="cache")


def main() -> None:
    """Entry point that turns user errors into one red line and exit code 2, not a traceback."""
    try:
        app()
    except InferdError as exc:
        render.error(exc.message)
        sys.exit(2)
