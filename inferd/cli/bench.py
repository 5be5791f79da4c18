"""`inferd bench`: a package's latency and throughput on every backend, against the bare call and PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from inferd.cli import render
from inferd.cli.options import PackageArg, package_path
from inferd.cli.render import console


def bench(
    package: PackageArg,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    runs: Annotated[int, typer.Option(min=10)] = 200,
    baseline: Annotated[bool, typer.Option(help="time the PyTorch source model too, when known")] = True,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
) -> None:
    """Latency and throughput for each backend × precision, against the bare backend call and PyTorch."""
    from inferd.bench.engine import run_engine_benchmark
    from inferd.package import ModelPackage

    package = package_path(package)
    factory = ModelPackage.load(package, verify=False).manifest.source.factory if baseline else None  # verified below
    if factory and not factory.startswith("inferd."):
        console.print(f"[yellow]not importing untrusted source factory {factory}; no PyTorch baseline[/yellow]")
        factory = None
    with render.progress() as progress:
        task = progress.add_task("benchmarking", total=10)
        report = run_engine_benchmark(str(package), batch=batch, runs=runs, torch_factory=factory,
                                      progress=lambda _: progress.advance(task))
    render.engine_report(report, package, batch)
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.as_dict(), indent=2))
        console.print(f"wrote {json_file}")
