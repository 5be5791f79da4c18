"""`inferd serve`: a repository's models over HTTP (REST and V2) and optionally gRPC, here or on Ray Serve."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from inferd.cli.options import MODEL, SERVER, ComputeUnitsOpt, PrecisionOpt, RayOptions, parse_size, serve_option
from inferd.cli.render import console
from inferd.errors import InferdError, validation_summary
from inferd.serve.settings import ServerSettings, ServingSettings


def serve(
    repository: Annotated[Path, typer.Argument(help="model repository directory")] = SERVER["repository"].default,
    host: Annotated[str, typer.Option(
        help="address to bind; 0.0.0.0 exposes the server to the network")] = SERVER["host"].default,
    port: Annotated[int, typer.Option()] = SERVER["port"].default,
    default_model: Annotated[str | None, typer.Option(
        help="model for POST /predict, or /embed if it takes text")] = SERVER["default_model"].default,
    model_control: Annotated[str, typer.Option(help="none | poll | explicit")] = SERVER["model_control"].default,
    load_model: Annotated[list[str] | None, typer.Option(help="model to load at start (explicit mode)")] = None,
    poll_interval: Annotated[float, typer.Option(
        help="seconds between repository scans (poll mode)")] = SERVER["poll_interval_s"].default,
    max_batch_size: Annotated[int, typer.Option(
        help="rows per dynamic batch; 1 disables batching")] = MODEL["max_batch_size"].default,
    max_queue_delay_ms: Annotated[float, typer.Option(
        help="how long a request waits for batch company")] = MODEL["max_queue_delay_ms"].default,
    max_queue_size: Annotated[int, typer.Option(help="queued requests per model before 429")] = MODEL["max_queue_size"].default,
    instances: Annotated[int, typer.Option(
        help="concurrent executions per model, each on its share of the cores: 1 answers one request fastest, "
             "one per core serves the most requests")] = MODEL["instances"].default,
    timeout: Annotated[float, typer.Option(help="default request deadline in seconds")] = MODEL["timeout_s"].default,
    max_memory: Annotated[str | None, typer.Option(help="memory budget for loaded models, e.g. 4G")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted")] = SERVER["max_body_bytes"].default,
    body_timeout: Annotated[float, typer.Option(
        help="seconds a request body may pause before the server answers 408 (slow-client guard)",
    )] = SERVER["body_timeout_s"].default,
    api_key: Annotated[str | None, typer.Option(envvar="INFERD_API_KEY", help="require this key (Bearer or X-API-Key)")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="allow browser calls from this origin")] = None,
    access_log: Annotated[bool, typer.Option(help="log one JSON line per request to stderr")] = SERVER["access_log"].default,
    allow_shared_memory: Annotated[bool, typer.Option(
        help="let clients on this machine pass tensors through registered shared memory (Triton's extension)",
    )] = SERVER["allow_shared_memory"].default,
    grpc_port: Annotated[int | None, typer.Option(
        help="also serve V2 over gRPC on this port (Triton uses 8001)")] = SERVER["grpc_port"].default,
    metrics_port: Annotated[int | None, typer.Option(help=SERVER["metrics_port"].description)] = None,
    max_request_rows: Annotated[int, typer.Option(
        help=MODEL["max_request_rows"].description)] = MODEL["max_request_rows"].default,
    max_connections: Annotated[int, typer.Option(
        help=SERVER["max_connections"].description)] = SERVER["max_connections"].default,
    head_timeout: Annotated[float, typer.Option(
        help=SERVER["head_timeout_s"].description)] = SERVER["head_timeout_s"].default,
    keep_alive_timeout: Annotated[float, typer.Option(
        help=SERVER["keep_alive_timeout_s"].description)] = SERVER["keep_alive_timeout_s"].default,
    drain_timeout: Annotated[float, typer.Option(
        help=SERVER["drain_timeout_s"].description)] = SERVER["drain_timeout_s"].default,
    compute_units: ComputeUnitsOpt = MODEL["compute_units"].default,
    precision: PrecisionOpt = MODEL["precision"].default,
    ray_address: Annotated[str | None, typer.Option("--ray", help="serve on the Ray cluster whose head is at this "
                                                    "HOST:PORT, with Ray Serve (pip install 'inferd[ray]')")] = None,
    ray_option: RayOptions = None,
) -> None:
    """Serve the models of a repository over HTTP: simple REST and the Open Inference Protocol (V2)."""
    from pydantic import ValidationError

    from inferd.serve import process

    if not repository.is_dir():
        raise InferdError(f"{repository} is not a directory; run `inferd prepare {repository}` first")
    if model_control not in ("none", "poll", "explicit"):
        raise InferdError(f"--model-control must be none, poll or explicit, not {model_control!r}")
    try:
        settings = ServerSettings(
            repository=repository, host=host, port=port, default_model=default_model,
            model_control=model_control,
            load_models=load_model or [], poll_interval_s=poll_interval,
            models=ServingSettings(max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                                   max_queue_size=max_queue_size, instances=instances, timeout_s=timeout,
                                   max_request_rows=max_request_rows, compute_units=compute_units, precision=precision),
            max_memory_bytes=parse_size(max_memory) if max_memory else None, max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout,
            api_key=api_key, cors_origins=cors_origin or [], access_log=access_log,
            allow_shared_memory=allow_shared_memory, grpc_port=grpc_port, metrics_port=metrics_port,
            max_connections=max_connections, head_timeout_s=head_timeout, keep_alive_timeout_s=keep_alive_timeout,
            drain_timeout_s=drain_timeout,
        )
    except ValidationError as exc:
        raise InferdError(validation_summary(exc, serve_option)) from None
    if ray_address:
        from inferd.deploy.ray import run

        layout = run.parse_options(ray_option or [], http_host=host, http_port=port)
        return run.run(ray_address, repository, settings, layout,
                       started=lambda: console.print(f"serving {repository} on Ray Serve at http://{host}:{port}"))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("inferd").addHandler(handler)
    logging.getLogger("inferd").setLevel(logging.INFO)  # one JSON access line per request, plus model loads

    def announce(bound: int) -> None:
        base = f"http://{host}:{bound}"
        console.print(f"serving {repository} on [bold]{base}[/bold] once its models load  (API docs: {base}/docs)")
        console.print(f"  try: curl -F image=@photo.jpg {base}/predict")
        console.print(f"       curl -d '[\"a cat\", \"a kitten\"]' {base}/embed")
        if grpc_port is not None:
            console.print(f"  gRPC (Open Inference Protocol, as tritonclient.grpc speaks it): {host}:{grpc_port}")
        if metrics_port is not None:
            console.print(f"  metrics (Prometheus, no API key): http://{host}:{metrics_port}/metrics")

    process.run(settings, announce)
