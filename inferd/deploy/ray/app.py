"""The Serve application of a model repository, the Serve config file that deploys it, and running it on a cluster.

One deployment per model (or one multiplexed deployment for them all) behind one ingress; each deployment's
options come from the model's serving settings (flags, then serving.toml) and `RaySettings`, so `inferd serve
--ray`, `serve run serve.yaml` and `serve deploy serve.yaml` deploy exactly the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve import Application

from inferd.deploy.ray.ingress import Catalog, Ingress
from inferd.deploy.ray.replica import ModelServer
from inferd.deploy.ray.settings import RaySettings, repository_path
from inferd.errors import InferdError
from inferd.package import ModelPackage
from inferd.serve.repository import discover, version_key
from inferd.serve.settings import ServerSettings, ServingSettings, load_serving_settings
from inferd.types import ImageType, TextType

ROUTER = "_router"  # model names start with a letter or digit, so no model's deployment can take these names
MULTIPLEXED = "_models"
BUILDER = "inferd.deploy.ray.app:app_builder"


def build_app(repository: str | Path, server: ServerSettings | None = None, layout: RaySettings | None = None) -> Application:
    """The application for `serve.run`; `server` holds the settings `inferd serve` takes, `layout` the cluster's."""
    server, layout = server or ServerSettings(), layout or RaySettings()
    root = repository_path(repository)
    found = {name: versions[max(versions, key=version_key)] for name, versions in discover(root).items()}
    if not found:
        raise InferdError(f"{root} holds no model package; run `inferd prepare {root}` or `inferd convert ... -o "
                          f"{root}/NAME` first")
    server = server.model_copy(update={
        "repository": root, "allow_shared_memory": False,  # a replica may be on another machine than the client
        "grpc_port": None,
        "models": server.models.model_copy(update={"threads": layout.threads}),
    })
    settings = server.model_dump(mode="json")
    inputs = {name: ModelPackage.load(path, verify=False).manifest.inputs for name, path in found.items()}
    handles: dict[str, Application] = {}
    if layout.models_per_replica is not None:
        shared = serve.deployment(name=MULTIPLEXED, **layout.model_options(server.models))(ModelServer)
        handles = dict.fromkeys(found, shared.bind(settings, [], layout.models_per_replica))
    else:
        for name, path in found.items():
            options = layout.model_options(_serving(root, path, server.models))
            handles[name] = serve.deployment(name=name, **options)(ModelServer).bind(settings, [name])
    catalog = Catalog(
        models=sorted(found), multiplexed=layout.models_per_replica is not None, max_body_bytes=server.max_body_bytes,
        image_default=_default(inputs, ImageType, server.default_model), text_default=_default(inputs, TextType,
                                                                                             server.default_model))
    return serve.deployment(name=ROUTER, **layout.ingress_options())(serve.ingress()(Ingress)).bind(catalog, handles)


def app_builder(args: dict[str, Any]) -> Application:
    """What a Serve config's `import_path` names: the application from the `args` the config carries."""
    return build_app(args["repository"], ServerSettings.model_validate(args.get("server", {})),
                     RaySettings.model_validate(args.get("ray", {})))


def serve_config(repository: str | Path, server: ServerSettings, layout: RaySettings) -> dict[str, Any]:
    """A Serve config file's content, for `serve run` or `serve deploy`.

    The API key is left out, so the file can be shared: replicas read it from INFERD_API_KEY, as `inferd serve` does.
    """
    build_app(repository, server, layout)  # refuse a repository or settings that would not deploy, before writing
    config: dict[str, Any] = {
        "proxy_location": layout.proxy_location,
        "http_options": {"host": layout.http_host, "port": layout.http_port},
        "applications": [{
            "name": layout.name, "route_prefix": "/", "import_path": BUILDER,
            "args": {"repository": str(repository_path(repository)),
                     "server": server.model_dump(mode="json", exclude={"api_key", "repository"}, exclude_defaults=True),
                     "ray": layout.model_dump(mode="json", exclude_defaults=True)},
        }],
    }
    return config


def write_config(path: Path, repository: str | Path, server: ServerSettings, layout: RaySettings) -> None:
    path.write_text(yaml.safe_dump(serve_config(repository, server, layout), sort_keys=False))


def start_proxies(layout: RaySettings) -> None:
    """Serve's HTTP proxies where `layout` says, on `http_host`; Serve's gRPC proxy stays off (see the README)."""
    serve.start(proxy_location=layout.proxy_location, http_options={"host": layout.http_host, "port": layout.http_port})


def _serving(root: Path, path: Path, defaults: ServingSettings) -> ServingSettings:
    """A model's serving settings as its replicas will read them: the defaults, then serving.toml files."""
    return load_serving_settings(defaults, path.parent if path.parent != root else path, path)


def _default(inputs: dict[str, list[Any]], kind: type, preferred: str | None) -> str | None:
    """The model `POST /predict` (images) or `/embed` (text) serves: `--default-model` when it takes that, else
    the first that does, as `inferd serve` picks it."""
    takers = [name for name in sorted(inputs) if any(isinstance(spec, kind) for spec in inputs[name])]
    if preferred in takers:
        return preferred
    return takers[0] if takers else None
