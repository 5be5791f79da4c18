"""`inferd deploy`: a repository run beyond one process, on Ray Serve or from a bundle of service files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferd.cli.options import MODEL, SERVER, RayOptions, parse_size, serve_option
from inferd.cli.render import console
from inferd.errors import InferdError, validation_summary
from inferd.serve.settings import ServerSettings, ServingSettings

deploy_app = typer.Typer(help="Run a repository beyond one process: Ray Serve, or a bundle for systemd, launchd, "
                                "Docker, nginx and Kubernetes/KServe.", no_args_is_help=True)


@deploy_app.command("bundle")
def deploy_bundle(
    repository: Annotated[Path, typer.Argument(help="model repository directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write the bundle into")] = Path("deploy"),
    host: Annotated[str, typer.Option(help="address each backend binds")] = SERVER["host"].default,
    port: Annotated[int, typer.Option(help="HTTP port (backend i uses port + i)")] = 8000,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (backend i uses grpc-port + i)")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body")] = SERVER["max_body_bytes"].default,
    timeout: Annotated[float, typer.Option(help="default request deadline in seconds")] = MODEL["timeout_s"].default,
    instances: Annotated[int, typer.Option(help="concurrent executions per model")] = MODEL["instances"].default,
    max_memory: Annotated[str | None, typer.Option(help="memory budget for loaded models, e.g. 4G")] = None,
    backends: Annotated[int, typer.Option(help="inferd processes behind nginx")] = 3,
    rate: Annotated[int, typer.Option(help="requests/s per client address before nginx answers 429")] = 100,
    fail_timeout: Annotated[int, typer.Option(
        help="seconds nginx sends a backend nothing after a failed connect; wait this long after a restarted "
             "backend is ready before restarting the next")] = 5,
) -> None:
    """Write service files, a container, nginx and Kubernetes/KServe manifests that serve the repository."""
    from pydantic import ValidationError

    from inferd.deploy import bundle

    try:
        settings = ServerSettings(repository=repository, host=host, port=port, grpc_port=grpc_port,
                                  max_body_bytes=max_body_bytes, max_memory_bytes=parse_size(max_memory) if max_memory else None,
                                  models=ServingSettings(timeout_s=timeout, instances=instances))
    except ValidationError as exc:
        raise InferdError(validation_summary(exc, serve_option)) from None
    balancer = bundle.balancer_for(settings, backends, rate_per_s=rate, burst=2 * rate, fail_timeout_s=fail_timeout)
    for path in bundle.write_bundle(repository, output, settings, balancer):
        console.print(f"wrote {path}")


@deploy_app.command("ray")
def deploy_ray(
    repository: Annotated[str, typer.Argument(help="model repository: a path or file:// URI that every node reads")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Serve config file to write")] = Path("serve.yaml"),
    ray_option: RayOptions = None,
) -> None:
    """Write a Ray Serve config that serves the repository as `inferd serve` does: `serve run serve.yaml`."""
    from inferd.deploy.ray import run

    run.write_config(output, repository, ServerSettings(), run.parse_options(ray_option or []))
    console.print(f"wrote {output}; deploy it with `serve run {output}` or `serve deploy {output}`")

