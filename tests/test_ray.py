"""inferd on Ray Serve, on a real cluster of three Ray nodes (a head and two workers) on this machine's loopback.

One cluster serves the whole module; each test deploys its application over the last one. Every Ray process
must stay on 127.0.0.1: the fixture reads the sockets of every process the cluster started, after each test,
and fails on any other address, listening or connected.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: nodes stay on 127.0.0.1

import pytest

ray = pytest.importorskip("ray")

import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.http as triton  # noqa: E402
import yaml  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from inferd import tolerance  # noqa: E402
from inferd.deploy.ray.app import BUILDER, build_app, start_proxies  # noqa: E402
from inferd.deploy.ray.settings import RaySettings  # noqa: E402
from inferd.manifest import Manifest, Source  # noqa: E402
from inferd.package import ModelPackage  # noqa: E402
from inferd.serve.settings import ServerSettings, ServingSettings  # noqa: E402
from inferd.types import TensorType  # noqa: E402
from tests.conftest import LiveServer, free_port, samples  # noqa: E402

pytestmark = pytest.mark.slow
APP = "inferd"
NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 2**20}
LOOPBACK = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def off_loopback_sockets() -> list[str]:
    """TCP sockets of the cluster's processes (all started by this one) on any address but loopback."""
    pids = _descendants(os.getpid())
    lines = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    bad = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or not any(f"pid={pid}," in fields[5] for pid in pids):
            continue
        local, peer = fields[3], fields[4]
        if not local.startswith(LOOPBACK) or (fields[0] != "LISTEN" and not peer.startswith(LOOPBACK)):
            bad.append(line)
    return bad


@dataclass
class RayCluster:
    cluster: Cluster
    url: str
    metrics_ports: list[int]

    def deploy(self, repository: Path, server: ServerSettings, layout: RaySettings) -> None:
        serve.run(build_app(repository, server, layout), name=APP, route_prefix="/")

    def replicas(self, deployment: str) -> int:
        status = serve.status().applications[APP].deployments[deployment]
        return int(status.replica_states.get("RUNNING", 0))

    def ray_metric(self, name: str) -> float:
        """A Ray metric summed over every node's exporter."""
        total = 0.0
        for port in self.metrics_ports:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            total += sum(samples(text, name).values())
        return total


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    ports = [free_port() for _ in range(3)]
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "num_cpus": 0, "include_dashboard": False, "metrics_export_port": ports[0],
        "_system_config": {"metrics_report_interval_ms": 500}})
    try:
        for port in ports[1:]:
            cluster.add_node(**NODE, metrics_export_port=port)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        http_port = free_port()
        start_proxies(RaySettings(http_port=http_port, proxy_location="HeadOnly"))
        print(f"cluster of 3 nodes up in {time.monotonic() - started:.1f} s")
        yield RayCluster(cluster, f"http://127.0.0.1:{http_port}", ports)
        assert off_loopback_sockets() == []
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(autouse=True)
def stays_on_loopback(cluster: RayCluster) -> Iterator[None]:
    yield
    assert off_loopback_sockets() == [], "a Ray process listens on or talks to an address other than 127.0.0.1"


def _repository(tmp: Path, *names: str, source: Path) -> Path:
    tmp.mkdir(exist_ok=True)
    for name in names:
        (tmp / name).symlink_to(source / name)
    return tmp


def _infer_tensor(client: triton.InferenceServerClient, model: str, x: np.ndarray, name: str = "image") -> np.ndarray:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    output = "logits" if name == "image" else "y"
    return client.infer(model, [tensor], outputs=[triton.InferRequestedOutput(output, binary_data=True)]).as_numpy(output)


def test_answers_as_inferd_serve_does(cluster: RayCluster, server: LiveServer, default_repository: Path,
                                      chelsea_tensor: np.ndarray, chelsea_png: bytes, coffee_jpeg: bytes) -> None:
    cluster.deploy(default_repository, ServerSettings(), RaySettings(cpus_per_replica=0.5))
    ours, theirs = (triton.InferenceServerClient(url.removeprefix("http://")) for url in (cluster.url, server.url))
    for client in (ours, theirs):
        assert client.is_server_ready() and client.is_model_ready("minilm-l6")
    # V2 binary tensors in and out, encoded images as BYTES with the classification extension, text as BYTES
    # each side picks its backend and precision by measurement (replicas have fewer threads), so the answers are
    # the same within inferd's tolerance rather than to the bit
    same = tolerance.compare("logits", _infer_tensor(theirs, "efficientnet-lite0", chelsea_tensor),
                             _infer_tensor(ours, "efficientnet-lite0", chelsea_tensor), classifier_activation="softmax")
    assert same.passed, same.reason
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([chelsea_png], dtype=object))
    ranked = [c.infer("efficientnet-lite0", [image], outputs=[triton.InferRequestedOutput("logits", class_count=3)])
              .as_numpy("logits") for c in (ours, theirs)]
    assert [s.split(b":")[1:] for s in ranked[0][0]] == [s.split(b":")[1:] for s in ranked[1][0]]
    texts = triton.InferInput("text", [2], "BYTES")
    texts.set_data_from_numpy(np.array([b"a cat", b"stock market"], dtype=object))
    same = tolerance.compare("embedding", theirs.infer("minilm-l6", [texts]).as_numpy("embedding"),
                             ours.infer("minilm-l6", [texts]).as_numpy("embedding"))
    assert same.passed, same.reason
    # the same contract; the backend in `parameters` is each side's measured choice (a replica has fewer threads)
    metadata = [c.get_model_metadata("minilm-l6") for c in (ours, theirs)]
    assert [{k: v for k, v in m.items() if k != "parameters"} for m in metadata] == [
        {k: v for k, v in metadata[1].items() if k != "parameters"}] * 2
    assert all(set(m["parameters"]) == {"backend", "device", "precision"} for m in metadata)
    # the simple REST routes, defaults included, and their errors
    with httpx.Client(timeout=30) as http:
        def both(method: str, path: str, **kwargs: object) -> tuple[httpx.Response, httpx.Response]:
            return tuple(http.request(method, base + path, **kwargs) for base in (cluster.url, server.url))  # type: ignore[return-value]

        for a, b in (both("POST", "/predict", files={"image": ("coffee.jpg", coffee_jpeg)}),
                     both("POST", "/predict/efficientnet-lite0/batch?top_k=3",
                          files=[("images", ("c.png", chelsea_png)), ("images", ("c.jpg", coffee_jpeg))])):
            assert a.status_code == b.status_code == 200
            labels = [[p["label"] for p in r.get("predictions", [])] or [[p["label"] for p in i["predictions"]]
                                                                          for i in r["results"]]
                      for r in (a.json(), b.json())]
            assert labels[0] == labels[1]
        a, b = both("POST", "/embed", json=["a cat", "a kitten"])
        same = tolerance.compare("embedding", np.asarray(b.json()["embeddings"]), np.asarray(a.json()["embeddings"]))
        assert same.passed, same.reason
        a, b = both("GET", "/models")
        assert [m["name"] for m in a.json()["models"]] == [m["name"] for m in b.json()["models"]]
        for path, status in (("/predict/nope", 404), ("/predict/..%2Fetc", 404), ("/v2/models/nope", 404)):
            a, b = both("POST" if path.startswith("/predict") else "GET", path, files={"image": ("c.png", chelsea_png)}
                        if path.startswith("/predict") else None)
            assert a.status_code == b.status_code == status, (path, a.text, b.text)
            assert a.json() == b.json()
        a, b = both("POST", "/embed/efficientnet-lite0", json=["a cat"])
        assert a.status_code == b.status_code == 400 and a.json() == b.json()
        assert http.post(cluster.url + "/v2/repository/index").json() == http.post(server.url + "/v2/repository/index").json()
        refused = http.post(cluster.url + "/v2/repository/models/minilm-l6/unload")
        assert refused.status_code == 400 and "redeploy" in refused.json()["error"]


def _tiny_models(root: Path, count: int) -> dict[str, float]:
    """`count` packages y = k·x, k = 1..count: a wrong model, or a stale one, gives a wrong answer."""
    factors = {}
    for k in range(1, count + 1):
        name = f"times-{k}"
        graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], name,
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                                  [numpy_helper.from_array(np.array(float(k), dtype=np.float32), "k")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        manifest = Manifest(name=name, source=Source(framework="onnx"), inputs=[TensorType(name="x", shape=(-1, 4))],
                            outputs=[TensorType(name="y", shape=(-1, 4))])
        ModelPackage(manifest, model=model).save(root / name)
        factors[name] = float(k)
    return factors


def test_five_models_multiplexed_two_per_replica(cluster: RayCluster, tmp_path: Path) -> None:
    factors = _tiny_models(tmp_path, 5)
    loads_before = cluster.ray_metric("ray_serve_multiplexed_models_load_counter_total")
    cluster.deploy(tmp_path, ServerSettings(), RaySettings(models_per_replica=2, min_replicas=2, max_replicas=2,
                                                           cpus_per_replica=0.5))
    client = triton.InferenceServerClient(cluster.url.removeprefix("http://"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    answered = Counter()
    for _ in range(3):
        for name, k in factors.items():
            np.testing.assert_array_equal(_infer_tensor(client, name, x, name="x"), x * k)
            answered[name] += 1
    assert answered == dict.fromkeys(factors, 3)
    # two replicas hold two models each, so five models in turn cannot all stay: some were loaded again
    deadline = time.monotonic() + 15
    while (loads := cluster.ray_metric("ray_serve_multiplexed_models_load_counter_total") - loads_before) < 5:
        assert time.monotonic() < deadline, f"Ray's metrics counted {loads} model loads, expected at least 5"
        time.sleep(0.5)
    print(f"multiplexed: 15 requests over 5 models, {loads:.0f} model loads counted by Serve")


def _load(url: str, body: Callable[[], dict[str, object]], stop: threading.Event, outcomes: list[tuple[float, int]],
          ) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            try:
                status = http.post(url, **body()).status_code  # type: ignore[arg-type]
            except httpx.HTTPError:
                status = 0
            outcomes.append((time.monotonic(), status))


def test_autoscales_up_under_load_and_back_down(cluster: RayCluster, tmp_path: Path, default_repository: Path,
                                                chelsea_tensor: np.ndarray) -> None:
    repository = _repository(tmp_path, "efficientnet-lite0", source=default_repository)
    layout = RaySettings(min_replicas=1, max_replicas=2, cpus_per_replica=0.5, target_ongoing_requests=1,
                         upscale_delay_s=0.5, downscale_delay_s=2)
    cluster.deploy(repository, ServerSettings(models=ServingSettings(max_batch_size=1)), layout)
    assert cluster.replicas("efficientnet-lite0") == 1
    request = _v2_body(chelsea_tensor)
    stop, outcomes = threading.Event(), []
    with ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(_load, cluster.url + "/v2/models/efficientnet-lite0/infer", lambda: request, stop, outcomes)
        started = time.monotonic()
        try:
            while cluster.replicas("efficientnet-lite0") < 2:
                assert time.monotonic() - started < 60, "no second replica under load"
                time.sleep(0.25)
            up_s = time.monotonic() - started
        finally:
            stop.set()
    assert {status for _, status in outcomes} == {200}
    idle = time.monotonic()
    while cluster.replicas("efficientnet-lite0") > 1:
        assert time.monotonic() - idle < 60, "still two replicas a minute after the load stopped"
        time.sleep(0.25)
    print(f"autoscaling: 2 replicas {up_s:.1f} s into the load, back to 1 {time.monotonic() - idle:.1f} s after it")


def _v2_body(x: np.ndarray) -> dict[str, object]:
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    return {"content": body, "headers": {"Inference-Header-Content-Length": str(header_length)}}


def test_overload_answers_429_with_retry_after(cluster: RayCluster, tmp_path: Path, default_repository: Path,
                                              chelsea_tensor: np.ndarray) -> None:
    repository = _repository(tmp_path, "efficientnet-lite0", source=default_repository)
    serving = ServingSettings(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
    cluster.deploy(repository, ServerSettings(models=serving), RaySettings(cpus_per_replica=0.5))
    request = _v2_body(np.repeat(chelsea_tensor, 8, axis=0))

    def call(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as http:
            return http.post(cluster.url + "/v2/models/efficientnet-lite0/infer", **request)  # type: ignore[arg-type]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(64)))
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) == {200, 429}, statuses
    refused = [answer for answer in answers if answer.status_code == 429]
    assert all(answer.headers["retry-after"].isdigit() and "queue" in answer.json()["error"] for answer in refused)
    # bounded: two requests run, two wait at each caller; everything else is refused at once
    assert statuses[200] <= 32, statuses
    print(f"overload: {dict(statuses)} from 64 requests, 32 at a time")


def test_serve_run_deploys_the_written_config(cluster: RayCluster, server: LiveServer, tmp_path: Path,
                                              default_repository: Path, chelsea_tensor: np.ndarray) -> None:
    """`inferd deploy ray` writes serve.yaml, Serve's own `serve run` deploys it, tritonclient calls it over HTTP."""
    repository = _repository(tmp_path / "models", "efficientnet-lite0", source=default_repository)
    config = tmp_path / "serve.yaml"
    port = cluster.url.rsplit(":", 1)[1]
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "inferd", "deploy", "ray", str(repository), "-o", str(config), "--ray-option",
                    f"http_port={port}", "--ray-option", "proxy_location=HeadOnly", "--ray-option",
                    "cpus_per_replica=0.5"], check=True, capture_output=True, timeout=60)
    written = yaml.safe_load(config.read_text())["applications"]
    assert [(app["name"], app["import_path"], app["args"]["repository"]) for app in written] == [
        (APP, BUILDER, str(repository.resolve()))]
    if APP in serve.status().applications:
        serve.delete(APP)  # so that the application found running below is the one `serve run` deployed
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ran = subprocess.run([bin_dir / "serve", "run", str(config), "--address", cluster.cluster.address,
                          "--non-blocking"], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    deadline = time.monotonic() + 90
    while (app := serve.status().applications.get(APP)) is None or app.status != "RUNNING":
        assert time.monotonic() < deadline, f"serve run's application is not running after 90 s: {app}"
        time.sleep(0.5)
    assert set(app.deployments) == {"_router", "efficientnet-lite0"}
    ours, theirs = (triton.InferenceServerClient(url.removeprefix("http://")) for url in (cluster.url, server.url))
    assert ours.is_model_ready("efficientnet-lite0") and not ours.is_model_ready("minilm-l6")
    same = tolerance.compare("logits", _infer_tensor(theirs, "efficientnet-lite0", chelsea_tensor),
                             _infer_tensor(ours, "efficientnet-lite0", chelsea_tensor), classifier_activation="softmax")
    assert same.passed, same.reason


def test_worker_node_lost_under_traffic(cluster: RayCluster, tmp_path: Path, default_repository: Path,
                                        chelsea_tensor: np.ndarray) -> None:
    """Last: it takes a node away (and puts a fresh one back for nothing else to depend on)."""
    repository = _repository(tmp_path, "efficientnet-lite0", source=default_repository)
    cluster.deploy(repository, ServerSettings(), RaySettings(min_replicas=2, max_replicas=2, cpus_per_replica=1))
    router_node = _actor_nodes("_router")
    victim = next(node for node in cluster.cluster.worker_nodes if node.node_id not in router_node)
    assert victim.node_id in _actor_nodes("efficientnet-lite0"), "one replica per worker (1 CPU each)"
    request = _v2_body(chelsea_tensor)
    stop, outcomes = threading.Event(), []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(_load, cluster.url + "/v2/models/efficientnet-lite0/infer", lambda: request, stop, outcomes)
        time.sleep(2)
        removed = time.monotonic()
        cluster.cluster.remove_node(victim, allow_graceful=False)
        time.sleep(12)
        stop.set()
    before = [status for at, status in outcomes if at < removed]
    after = [(at - removed, status) for at, status in outcomes if at >= removed]
    failed = [(at, status) for at, status in after if status != 200]
    recovered_s = max((at for at, _ in failed), default=0.0)
    assert set(before) == {200} and len(before) > 10
    assert all(status == 503 for _, status in failed), failed  # refused with Retry-After, never a hang or a 500
    assert len(failed) <= 8, f"{len(failed)} requests failed; only those in flight on the lost node may"
    assert [status for at, status in after if at > recovered_s] and recovered_s < 10
    print(f"node loss: {len(failed)} of {len(after)} requests failed after the node went, "
          f"the last {recovered_s:.2f} s after; {len(before)} before, all answered")
    cluster.cluster.add_node(**NODE)


def _actor_nodes(deployment: str) -> set[str]:
    """Nodes running the live replicas of one of the application's deployments, from the GCS actor table."""
    from ray._private.state import state

    return {actor["Address"]["NodeID"] for actor in state.actor_table(None).values()
            if actor["State"] == "ALIVE" and actor.get("Name", "").startswith(f"SERVE_REPLICA::{APP}#{deployment}#")}
