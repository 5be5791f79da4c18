"""The deployment bundle: service files, container, balancer and cluster manifests, and monitoring (inferd's
Prometheus rules and Grafana dashboard, provisioned by the compose file) for one repository.

Every file is rendered from the same `ServerSettings` that `inferd serve` takes, so a port, a body limit or a
deadline is written once and the balancer, the container probe and the service agree with the server. The API key
is never written in clear: each file reads it from an environment file or a secret the operator fills in.
"""

from __future__ import annotations

import json
import plistlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from inferd.deploy.monitoring import DASHBOARD, RULES
from inferd.errors import InvalidInput
from inferd.serve.settings import ServerSettings
from inferd.version import __version__

MODEL_FORMATS = ("onnx", "inferd", "tensorflow", "pytorch")
"""What the KServe runtime declares: inferd serves ONNX and its own packages, and converts TF and PyTorch models."""

ENV_FILE = "/etc/inferd/inferd.env"
CONTAINER_REPOSITORY = "/srv/inferd/models"
PROMETHEUS_RULES = "/etc/prometheus/inferd-rules.yml"
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards/inferd"


@dataclass(frozen=True)
class Backend:
    host: str
    port: int
    grpc_port: int | None = None


@dataclass(frozen=True)
class BalancerSettings:
    """nginx's own settings: where it listens, how many requests a client may send, and whom it forwards to."""

    backends: tuple[Backend, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    listen_grpc_port: int = 8081
    rate_per_s: int = 100
    burst: int = 200
    fail_timeout_s: int = 5
    """After a failed connect nginx sends a backend nothing for this long (passive health checks: nginx's free
    edition has no active ones). A rolling restart must wait this long after a backend is ready again before
    stopping the next: nginx still counts it failed until then, and with every backend counted failed it answers
    502 "no live upstreams" without trying any."""

    def __post_init__(self) -> None:
        if not self.backends:
            raise InvalidInput("the balancer needs at least one backend: pass --backends 1 or more")
        if self.fail_timeout_s < 1:
            raise InvalidInput(f"--fail-timeout must be at least 1 s, not {self.fail_timeout_s}")
        if self.rate_per_s < 1 or self.burst < 0:
            raise InvalidInput(f"--rate must be at least 1 request/s and --burst at least 0, "
                               f"not {self.rate_per_s} and {self.burst}")


def serve_args(settings: ServerSettings, repository: str, host: str, port: int, grpc_port: int | None) -> list[str]:
    """The `inferd serve` arguments that reproduce `settings` (the key excepted: it comes from the environment)."""
    models = settings.models
    args = [repository, "--host", host, "--port", str(port), "--max-body-bytes", str(settings.max_body_bytes),
            "--instances", str(models.instances), "--drain-timeout", _number(settings.drain_timeout_s)]
    if models.timeout_s is not None:
        args += ["--timeout", _number(models.timeout_s)]
    if grpc_port is not None:
        args += ["--grpc-port", str(grpc_port)]
    if settings.max_memory_bytes is not None:
        args += ["--max-memory", str(settings.max_memory_bytes)]
    return args


def balancer_for(settings: ServerSettings, count: int, **options: int | str) -> BalancerSettings:
    """`count` backends on consecutive ports from the server's own, as `count` processes on this machine run them."""
    if count < 1:
        raise InvalidInput(f"--backends must be at least 1, not {count}")
    last = max(settings.port, settings.grpc_port or 0) + count - 1
    if last > 65535:
        raise InvalidInput(f"{count} backends from port {settings.port} run past port 65535: choose a lower --port")
    grpc = settings.grpc_port
    if grpc is not None and abs(grpc - settings.port) < count:
        raise InvalidInput(f"{count} backends on HTTP ports from {settings.port} and gRPC ports from {grpc} would share "
                           f"a port: leave {count} ports between them (e.g. --grpc-port {settings.port + 1000})")
    backends = tuple(Backend(settings.host, settings.port + i, None if grpc is None else grpc + i) for i in range(count))
    return BalancerSettings(backends, **options)  # type: ignore[arg-type]


def render_nginx(settings: ServerSettings, balancer: BalancerSettings) -> str:
    """nginx.conf for `balancer`, its body limit and read timeout taken from the server's."""
    grpc = all(backend.grpc_port is not None for backend in balancer.backends)
    return _environment().get_template("nginx.conf.j2").render(
        backends=balancer.backends, grpc=grpc, listen_host=balancer.listen_host, listen_port=balancer.listen_port,
        listen_grpc_port=balancer.listen_grpc_port, rate_per_s=balancer.rate_per_s, burst=balancer.burst,
        fail_timeout_s=balancer.fail_timeout_s,
        max_body_bytes=settings.max_body_bytes, read_timeout_s=_read_timeout(settings),
        # Below the server's keep-alive, so nginx never reuses a connection the server is closing.
        upstream_keepalive_s=max(1, int(settings.keep_alive_timeout_s) - 1))


def write_bundle(repository: Path, output: Path, settings: ServerSettings, balancer: BalancerSettings,
                 image: str = f"inferd:{__version__}") -> list[Path]:
    """Write every file of the bundle into `output`; returns their paths."""
    if not repository.is_dir():
        raise InvalidInput(f"{repository} is not a directory; run `inferd prepare {repository}` first")
    repository = repository.resolve()
    output.mkdir(parents=True, exist_ok=True)
    port, grpc_port = settings.port, settings.grpc_port
    container = ["inferd", "serve", *serve_args(settings, CONTAINER_REPOSITORY, "0.0.0.0", port, grpc_port)]
    memory = settings.max_memory_bytes
    values = {
        "repository": repository, "repository_name": repository.name, "version": __version__, "image": image,
        "port": port, "grpc_port": grpc_port, "env_file": ENV_FILE, "watchdog_s": 30,
        "stop_timeout_s": int(settings.drain_timeout_s) + 15,
        # The process's limit leaves room above the models' budget (--max-memory) for the server itself.
        "memory_max": f"{memory * 3 // 2 // 2**20}M" if memory else None,
        "memory_max_bytes": memory * 3 // 2 if memory else None,
        "k8s_memory": f"{memory * 3 // 2 // 2**20}Mi" if memory else "4Gi",
        "loopback": settings.host in ("127.0.0.1", "::1", "localhost"),
        "protect_home": "read-only" if repository.is_relative_to("/home") or repository.is_relative_to("/root") else "yes",
        "exec_start": shlex.join([str(Path(sys.executable).parent / "inferd"), "serve",
                                  *serve_args(settings, str(repository), settings.host, port, grpc_port)]),
        "container_cmd": json.dumps(container), "container_args": json.dumps(container[1:]),
        "kserve_args": json.dumps(["serve", "/mnt/models", *serve_args(settings, "", "0.0.0.0", port, grpc_port)[1:]]),
        "model_formats": MODEL_FORMATS, "service_name": repository.name.lower().replace("_", "-"),
        "replicas": len(balancer.backends),
        "prometheus_rules": PROMETHEUS_RULES, "grafana_dashboards": GRAFANA_DASHBOARDS, "scrape_interval": "15s",
    }
    templates = _environment()
    files = {name: templates.get_template(f"{name}.j2").render(values) for name in
             ("inferd.service", "Dockerfile", "compose.yaml", "prometheus.yml", "kserve.yaml", "kubernetes.yaml",
              "grafana-datasources.yaml", "grafana-dashboards.yaml")}
    files["inferd-rules.yml"] = RULES.read_text()
    files["inferd-dashboard.json"] = DASHBOARD.read_text()
    files["nginx.conf"] = render_nginx(settings, balancer)
    files["io.inferd.server.plist"] = plistlib.dumps(launchd_job(settings, repository)).decode()
    files["inferd.env.example"] = ("# Copy to inferd.env (compose) or /etc/inferd/inferd.env (systemd), mode 0600.\n"
                                   "INFERD_API_KEY=\n")
    written = []
    for name, text in files.items():
        path = output / name
        path.write_text(text)
        written.append(path)
    return written


def launchd_job(settings: ServerSettings, repository: Path) -> dict[str, object]:
    """The launchd job for macOS: started at load, restarted only when it fails, logs under /usr/local/var/log."""
    inferd = str(Path(sys.executable).parent / "inferd")
    return {
        "Label": "io.inferd.server",
        "ProgramArguments": [inferd, "serve", *serve_args(settings, str(repository), settings.host, settings.port,
                                                         settings.grpc_port)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Interactive",
        "ThrottleInterval": 10,
        "ExitTimeOut": int(settings.drain_timeout_s) + 15,
        "EnvironmentVariables": {"INFERD_CACHE_DIR": "/usr/local/var/cache/inferd"},
        "StandardOutPath": "/usr/local/var/log/inferd.log",
        "StandardErrorPath": "/usr/local/var/log/inferd.err.log",
    }


def _read_timeout(settings: ServerSettings) -> int:
    """Past the server's own request deadline, so the server answers 504 itself rather than nginx cutting it off."""
    deadline = settings.models.timeout_s
    return 300 if deadline is None else int(deadline) + 30


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _environment() -> Environment:
    return Environment(loader=PackageLoader("inferd.deploy", "templates"), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)
