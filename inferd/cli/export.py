"""`inferd export`: a package for other platforms, Core ML for Apple devices."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from inferd.cli import render
from inferd.cli.options import PackageArg, package_path

export_app = typer.Typer(help="Export a package for other platforms: Core ML for Apple devices.", no_args_is_help=True)


@export_app.command("coreml")
def export_coreml(
    package: PackageArg,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="the .mlpackage to write (default: NAME.mlpackage here)")] = None,
    precision: Annotated[str, typer.Option("--precision", "-p", help="compute precision: fp16 (Neural Engine) or fp32")] = "fp16",
    target: Annotated[str, typer.Option("--target", "-t", help="minimum deployment target: macOS13, macOS14, macOS15, "
                                         "iOS16, iOS17, iOS18, …")] = "macOS13",
    compress: Annotated[str | None, typer.Option(help="palettize:4, palettize:4:16 (grouped), quantize:8, prune:0.5, "
                                                 "prune:0.5,palettize:4 (joint, macOS15/iOS18)")] = None,
    source: Annotated[str, typer.Option(help="where the PyTorch network comes from: auto, factory or onnx")] = "auto",
    classifier: Annotated[bool, typer.Option("--classifier/--no-classifier",
                                             help="attach the labels as a Core ML classifier")] = True,
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
) -> None:
    """Export a package (or a model file) as a Core ML ML program (.mlpackage) for macOS/iOS apps; runs on any machine."""
    from inferd.export import to_coreml
    from inferd.export.coreml_compress import parse

    if compress:
        parse(compress)  # reject a bad specification before converting a model file
    target_path = output or Path(f"{package.stem if package.is_file() else package.resolve().name}.mlpackage")
    # coremltools' own progress bars are silenced through sys.stderr; this console keeps the real one.
    status_console = Console(file=sys.stderr)
    with status_console.status("exporting") as status:
        result = to_coreml(package_path(package), target_path, precision=precision, minimum_deployment_target=target,
                           compress=compress, source=source, classifier=classifier, overwrite=force,
                           progress=lambda stage: status.update(stage))
    render.coreml_export(result, package)
