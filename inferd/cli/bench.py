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
    plot: Annotated[Path | None, typer.Option(
        help="draw latency distributions and achieved vs peak to this PNG, with an HTML report beside it")] = None,
    roofline: Annotated[bool, typer.Option(
        help="count the model's MACs and compare each configuration with this machine's measured peak")] = True,
    refresh_peak: Annotated[bool, typer.Option(
        "--refresh-peak", help="measure this machine's peaks again instead of reading them from the cache")] = False,
) -> None:
    """Latency and throughput for each backend × precision, against the bare backend call and PyTorch,
    and the fraction of this machine's compute peak each one reaches."""
    from inferd.bench.engine import run_engine_benchmark
    from inferd.package import ModelPackage

    if plot:
        from inferd.bench.plotting import check_target

        check_target(plot)
    package = package_path(package)
    factory = ModelPackage.load(package, verify=False).manifest.source.factory if baseline else None  # verified below
    if factory and not factory.startswith("inferd."):
        console.print(f"[yellow]not importing untrusted source factory {factory}; no PyTorch baseline[/yellow]")
        factory = None
    peaks = None
    if roofline:
        from inferd.bench.peak import machine_peaks

        with console.status("this machine's compute peaks (measured once, then cached)") as status:
            peaks = machine_peaks(refresh=refresh_peak, progress=status.update)
    with render.progress() as progress:
        task = progress.add_task("benchmarking", total=10)
        report = run_engine_benchmark(str(package), batch=batch, runs=runs, torch_factory=factory, peaks=peaks,
                                      progress=lambda _: progress.advance(task))
    render.engine_report(report, package, batch)
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.as_dict(), indent=2))
        console.print(f"wrote {json_file}")
    if plot:
        from inferd.bench.plot_engine import write_plot

        page = write_plot(report, plot)
        console.print(f"wrote {plot} and {page}", soft_wrap=True)
