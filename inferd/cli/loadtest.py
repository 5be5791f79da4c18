"""`inferd loadtest URL`: a concurrency sweep against a running server, measured in stable windows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferd.cli.render import console
from inferd.errors import InferdError, InvalidInput


def concurrency_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or any(level < 1 for level in levels):
        raise InvalidInput(f"cannot read --concurrency {text!r}: give positive whole numbers separated by commas, "
                           "e.g. 1,2,4,8,16")
    return levels


def loadtest(
    url: Annotated[str, typer.Argument(metavar="URL", help="the server, e.g. http://127.0.0.1:8000 (with --protocol grpc: "
                                            "HOST:PORT of its gRPC port)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="default: the first model the server lists")] = None,
    protocol: Annotated[str, typer.Option(help="http or grpc (tritonclient.grpc.aio)")] = "http",
    fmt: Annotated[str, typer.Option("--format", help="V2 over HTTP: binary tensors or json")] = "binary",
    input_file: Annotated[Path | None, typer.Option("--input", help=".npz of arrays named after the "
                                                    "model's inputs (default: random tensors from its metadata)")] = None,
    images: Annotated[Path | None, typer.Option(help="a folder of image files, sent as V2 BYTES (or to "
                                                "/predict with --route rest)")] = None,
    text: Annotated[Path | None, typer.Option(help="a text file, one text a line, sent as V2 BYTES (or to "
                                              "/embed with --route rest)")] = None,
    route: Annotated[str, typer.Option(help="v2, or rest for the simple /predict and /embed routes")] = "v2",
    concurrency: Annotated[str, typer.Option(help="the levels to sweep, comma separated")] = "1,2,4,8,16",
    window_ms: Annotated[int, typer.Option(min=100, help="length of one measurement window")] = 2000,
    stability: Annotated[float, typer.Option(min=0.1, max=100, help="percent within which the last 3 windows' "
                                             "throughput and p50 must agree")] = 10.0,
    max_windows: Annotated[int, typer.Option(min=3, help="windows before a level is reported as unstable")] = 10,
    client: Annotated[str, typer.Option(help="HTTP client: raw (keep-alive sockets, cheapest), aiohttp or "
                                        "httpx")] = "raw",
    api_key: Annotated[str | None, typer.Option(envvar="INFERD_API_KEY", help="the server's API key")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds before a request counts as failed")] = 30.0,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="write one row per level as CSV")] = None,
    plot: Annotated[Path | None, typer.Option(help="draw latency against throughput as a PNG (and an HTML "
                                              "report next to it)")] = None,
    html: Annotated[Path | None, typer.Option(help="the HTML report's path (default: the PNG's, as .html)")] = None,
) -> None:
    """Sweep concurrency against a running server; report throughput, latency percentiles, errors and own CPU."""
    from inferd.bench.load.sweep import CLIENTS, run_sweep
    from inferd.bench.load.target import grpc_target, http_target
    from inferd.bench.load.windows import WindowPlan
    from inferd.bench.load.workload import build
    from inferd.cli import render_loadtest

    levels = concurrency_levels(concurrency)
    if protocol not in ("http", "grpc"):
        raise InvalidInput(f"--protocol takes http or grpc, not {protocol!r}")
    if client not in CLIENTS:
        raise InvalidInput(f"--client takes {', '.join(CLIENTS)}, not {client!r}")
    if html and not plot:
        raise InvalidInput("--html embeds the plot: give --plot FILE.png too")
    if plot:
        from inferd.bench.plotting import check_target

        check_target(plot)
    target = grpc_target(url, model, api_key) if protocol == "grpc" else http_target(url, model, api_key)
    workload = build(target, input_file=input_file, images=images, text=text, fmt=fmt, route=route)
    plan = WindowPlan(window_s=window_ms / 1000, stability=stability / 100, max_windows=max_windows)
    console.print(f"{target.model} at {target.address}: {workload.describe}; concurrency {levels}, windows of "
                  f"{window_ms} ms within {stability:g}%", soft_wrap=True)
    try:
        report = run_sweep(target, workload, levels, plan, client, timeout, on_level=render_loadtest.level_done)
    except OSError as exc:
        raise InferdError(f"lost {target.address} during the test ({exc}); is the server still running?") from None
    render_loadtest.table(report)
    for path, write in ((json_file, report.write_json), (csv_file, report.write_csv)):
        if path:
            write(path)
            console.print(f"wrote {path}")
    if plot:
        from inferd.bench.load.plot import write_plot

        console.print(f"wrote {plot} and {write_plot(report, plot, html)}")
    if all(level.throughput_rps == 0 for level in report.levels):
        raise InferdError("no request succeeded; the answers above say why (fix the inputs or the model name)")
