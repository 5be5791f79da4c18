"""`inferd deploy bundle`: every file of the bundle passes the real tool that consumes it (issue 18.4)."""

from __future__ import annotations

import json
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from inferd.cli import app
from inferd.deploy import bundle
from inferd.deploy.monitoring import DASHBOARD, RULES
from inferd.errors import InferdError
from inferd.serve.settings import ServerSettings, ServingSettings

SETTINGS = ServerSettings(port=8000, grpc_port=9000, max_body_bytes=16 * 2**20, max_memory_bytes=2 * 2**30,
                          models=ServingSettings(timeout_s=20, instances=2))


@pytest.fixture(scope="module")
def written(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("bundle")
    result = CliRunner().invoke(app, ["deploy", "bundle", str(default_repository), "-o", str(output), "--port", "8000",
                                      "--grpc-port", "9000", "--max-body-bytes", str(16 * 2**20), "--timeout", "20",
                                      "--instances", "2", "--max-memory", "2G"])
    assert result.exit_code == 0, result.output
    return output


def test_the_command_writes_every_file(written: Path) -> None:
    assert {p.name for p in written.iterdir()} == {
        "inferd.service", "io.inferd.server.plist", "Dockerfile", "compose.yaml", "prometheus.yml", "nginx.conf",
        "kserve.yaml", "kubernetes.yaml", "inferd.env.example", "inferd-rules.yml", "inferd-dashboard.json",
        "grafana-datasources.yaml", "grafana-dashboards.yaml"}


def test_no_bundle_for_a_missing_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, InferdError) and "is not a directory" in result.exception.message


def test_backends_past_the_last_port_are_refused(tmp_path: Path, default_repository: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "bundle", str(default_repository), "-o", str(tmp_path),
                                      "--port", "65534", "--backends", "3"])
    assert isinstance(result.exception, InferdError) and "past port 65535" in result.exception.message


def test_http_and_grpc_ports_of_the_backends_may_not_meet(tmp_path: Path, default_repository: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "bundle", str(default_repository), "-o", str(tmp_path),
                                      "--port", "8000", "--grpc-port", "8001", "--backends", "3"])
    assert isinstance(result.exception, InferdError) and "would share a port" in result.exception.message


def test_the_api_key_is_never_written(default_repository: Path, tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"api_key": "s3cret-key-value"})
    for path in bundle.write_bundle(default_repository, tmp_path, settings, bundle.balancer_for(settings, 3)):
        assert "s3cret-key-value" not in path.read_text(), path.name


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (.ci/run installs it)")
def test_nginx_accepts_the_config(written: Path, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "temp").mkdir()
    checked = subprocess.run(["nginx", "-t", "-p", f"{tmp_path}/", "-c", str(written / "nginx.conf"), "-e", "stderr"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    text = (written / "nginx.conf").read_text()
    assert re.findall(r"server 127.0.0.1:(\d+) ", text) == ["8000", "8001", "8002", "9000", "9001", "9002"]
    assert f"client_max_body_size {16 * 2**20};" in text and "proxy_read_timeout 50s;" in text
    assert "grpc_pass grpc://inferd_grpc;" in text and re.search(r"listen \S+ http2;", text)
    assert not re.search(r"^\s*proxy_next_upstream .*non_idempotent", text, re.M)  # no replay of a sent POST
    assert "limit_req_status 429;" in text and "Retry-After 1 always" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_unit_and_rates_it_safe(written: Path) -> None:
    unit = written / "inferd.service"
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for inferd.service: ([\d.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.5, security.stdout
    text = unit.read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=30", "DynamicUser=yes", "CacheDirectory=inferd",
                 "Environment=INFERD_CACHE_DIR=%C/inferd", "ProtectSystem=strict", "NoNewPrivileges=yes", "MemoryMax=3072M"):
        assert line in text.splitlines(), line


def test_the_launchd_job_round_trips(written: Path) -> None:
    job = plistlib.loads((written / "io.inferd.server.plist").read_bytes())
    assert job["RunAtLoad"] is True and job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ProcessType"] == "Interactive" and job["ThrottleInterval"] >= 10
    assert job["StandardOutPath"] and job["StandardErrorPath"] and Path(job["ProgramArguments"][0]).name == "inferd"
    _parse_serve(job["ProgramArguments"][2:])


def _parse_serve(args: list[str]) -> dict[str, object]:
    """`inferd serve`'s own parser on `args`: an unknown flag or a bad value fails here as it would at start."""
    import typer

    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    with command.make_context("serve", list(args)) as context:
        return dict(context.params)


def test_the_container_runs_a_command_serve_accepts(written: Path) -> None:
    lines = (written / "Dockerfile").read_text().splitlines()
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert cmd[:2] == ["inferd", "serve"]
    params = _parse_serve(cmd[2:])
    assert params["host"] == "0.0.0.0" and params["port"] == 8000 and params["grpc_port"] == 9000
    assert params["max_body_bytes"] == 16 * 2**20 and params["timeout"] == 20 and params["instances"] == 2
    assert any(line.startswith("FROM python:") and line.endswith("-slim") for line in lines)
    assert "USER inferd" in lines and 'VOLUME ["/var/cache/inferd"]' in lines
    assert not any("curl" in line for line in lines)


def test_the_container_healthcheck_reads_readiness(written: Path, server: object) -> None:
    """The HEALTHCHECK's exact command, run against a real server: 0 when ready, not 0 when nothing answers."""
    text = (written / "Dockerfile").read_text()
    check = json.loads(re.search(r"HEALTHCHECK .*?\\\n\s+CMD (\[.*\])", text).group(1))  # type: ignore[union-attr]
    assert check[:2] == ["python", "-c"] and "/v2/health/ready" in check[2]
    port = server.port  # type: ignore[attr-defined]
    ready = subprocess.run([sys.executable, "-c", check[2].replace(":8000/", f":{port}/")], capture_output=True)
    assert ready.returncode == 0, ready.stderr
    from tests.conftest import free_port

    down = subprocess.run([sys.executable, "-c", check[2].replace(":8000/", f":{free_port()}/")], capture_output=True)
    assert down.returncode != 0


# The compose file's shape: the parts of the Compose Specification's schema this bundle uses, closed, so a
# misspelt key fails as `docker compose config` would fail it.
_SERVICE = {"type": "object", "additionalProperties": False, "properties": {
    "build": {"type": "object", "additionalProperties": False, "required": ["context"],
              "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}}},
    "image": {"type": "string"}, "env_file": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": {"type": "string", "pattern": r"^127\.0\.0\.1:\d+:\d+$"}},
    "volumes": {"type": "array", "items": {"type": "string"}}, "stop_grace_period": {"type": "string",
                                                                                      "pattern": r"^\d+s$"},
    "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]}, "mem_limit": {"type": ["integer", "string"]},
    "environment": {"type": "object"}, "depends_on": {"type": "array", "items": {"type": "string"}}},
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}]}
_COMPOSE = {"type": "object", "additionalProperties": False, "required": ["services"], "properties": {
    "name": {"type": "string"}, "services": {"type": "object", "additionalProperties": _SERVICE},
    "volumes": {"type": "object"}}}


def test_compose_has_the_spec_shape(written: Path) -> None:
    compose = yaml.safe_load((written / "compose.yaml").read_text())
    jsonschema.validate(compose, _COMPOSE)
    services = compose["services"]
    assert set(services) == {"inferd", "prometheus", "grafana"}
    for service in services.values():
        for dependency in service.get("depends_on", []):
            assert dependency in services
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"] or (written / source).is_file(), volume
    assert (written / services["inferd"]["build"]["dockerfile"]).is_file()
    scrape = yaml.safe_load((written / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["inferd:8000"] and scrape["metrics_path"] == "/metrics"


def _mounts(written: Path, service: str) -> dict[str, str]:
    """A compose service's bind mounts: where in the container -> which file of the bundle."""
    volumes = yaml.safe_load((written / "compose.yaml").read_text())["services"][service]["volumes"]
    return {volume.split(":")[1]: volume.split(":")[0] for volume in volumes if volume.startswith("./")}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (.ci/run installs it)")
def test_prometheus_loads_the_rules_compose_mounts(written: Path, tmp_path: Path) -> None:
    """promtool checks the config and the rules it names, read where compose mounts them from."""
    config = yaml.safe_load((written / "prometheus.yml").read_text())
    mounts = _mounts(written, "prometheus")
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    [rules] = config["rule_files"]
    assert mounts[rules] == "./inferd-rules.yml"
    assert (written / "inferd-rules.yml").read_text() == RULES.read_text()
    config["rule_files"] = [str(written / mounts[rules])]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(["promtool", "check", "config", str(local)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 23 rules found" in checked.stdout
    assert config["scrape_configs"][0]["job_name"] == "inferd"  # the job the rules' scrape alerts select


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(written: Path) -> None:
    compose = yaml.safe_load((written / "compose.yaml").read_text())
    mounts = _mounts(written, "grafana")
    sources = yaml.safe_load((written / mounts["/etc/grafana/provisioning/datasources/inferd.yaml"]).read_text())
    [source] = sources["datasources"]
    assert sources["apiVersion"] == 1 and source["type"] == "prometheus" and source["isDefault"] is True
    published = compose["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert source["url"] == f"http://prometheus:{published}"
    providers = yaml.safe_load((written / mounts["/etc/grafana/provisioning/dashboards/inferd.yaml"]).read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    [dashboard] = [target for target in mounts if target.startswith(provider["options"]["path"] + "/")]
    assert mounts[dashboard] == "./inferd-dashboard.json"
    assert json.loads((written / "inferd-dashboard.json").read_text()) == json.loads(DASHBOARD.read_text())


def test_kubernetes_objects_pass_the_api_schema(written: Path) -> None:
    import kubernetes_validate

    objects = list(yaml.safe_load_all((written / "kubernetes.yaml").read_text()))
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    _parse_serve(container["args"][1:])
    misspelt = json.loads(json.dumps(objects[0]))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, "1.30.0", strict=True)


# KServe's custom kinds, closed over the fields of its CRDs (serving.kserve.io v1alpha1 ServingRuntimeSpec and
# v1beta1 InferenceService predictor) that the bundle uses: the `kserve` package itself pins protobuf 6 and would
# downgrade this project's protobuf 7, so its models are not installed here.
_CLOSED = {"type": "object", "additionalProperties": False}
_RUNTIME = {**_CLOSED, "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "serving.kserve.io/v1alpha1"}, "kind": {"const": "ClusterServingRuntime"},
    "metadata": {"type": "object"},
    "spec": {**_CLOSED, "required": ["containers", "supportedModelFormats"], "properties": {
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "supportedModelFormats": {"type": "array", "items": {**_CLOSED, "required": ["name"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "autoSelect": {"type": "boolean"},
            "priority": {"type": "integer", "minimum": 1}}}},
        "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
        "multiModel": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "containers": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "image"]}}}}}}
_SERVICE_KS = {**_CLOSED, "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "serving.kserve.io/v1beta1"}, "kind": {"const": "InferenceService"},
    "metadata": {"type": "object"},
    "spec": {**_CLOSED, "required": ["predictor"], "properties": {"predictor": {**_CLOSED, "properties": {
        "model": {**_CLOSED, "required": ["modelFormat"], "properties": {
            "modelFormat": {**_CLOSED, "required": ["name"], "properties": {"name": {"type": "string"},
                                                                             "version": {"type": "string"}}},
            "runtime": {"type": "string"}, "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
            "storageUri": {"type": "string"}}}}}}}}}


def test_kserve_objects_declare_inferd(written: Path) -> None:
    import kubernetes_validate

    runtime, service = yaml.safe_load_all((written / "kserve.yaml").read_text())
    jsonschema.validate(runtime, _RUNTIME)
    jsonschema.validate(service, _SERVICE_KS)
    spec = runtime["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"onnx", "inferd", "tensorflow", "pytorch"}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    # The runtime's container is a core Container: checked as one inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": spec["containers"]}}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    _parse_serve(spec["containers"][0]["args"][1:])
