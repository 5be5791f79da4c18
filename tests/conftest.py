"""Shared fixtures: the real default model, real photographs, and a real server on a loopback port."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

# Tests compile into a private cache so they measure cold and warm loads honestly. It grows to most of a
# gigabyte, so it goes when the run ends: CI machines have little disk to spare.
if "INFERD_CACHE_DIR" not in os.environ:
    os.environ["INFERD_CACHE_DIR"] = tempfile.mkdtemp(prefix="inferd-test-cache-")
    atexit.register(shutil.rmtree, os.environ["INFERD_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
CAT_LABELS = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"}


@pytest.fixture(scope="session")
def default_repository() -> Path:
    """The default repository `models/`, prepared exactly as `make run` prepares it: an image and a text model."""
    from inferd.zoo import efficientnet_lite0, minilm_l6

    repository = ROOT / "models"
    efficientnet_lite0.prepare(repository)
    minilm_l6.prepare(repository)
    return repository


@pytest.fixture(scope="session")
def default_package(default_repository: Path) -> Path:
    return default_repository / "efficientnet-lite0"


@pytest.fixture(scope="session")
def text_package(default_repository: Path) -> Path:
    return default_repository / "minilm-l6"


@pytest.fixture(scope="session")
def chelsea_tensor(default_package: Path) -> np.ndarray:
    """The cat photo as the default model's input tensor, batch of one."""
    from PIL import Image
    from skimage import data

    from inferd.io import to_tensor
    from inferd.zoo.efficientnet_lite0 import IMAGE

    return to_tensor(Image.fromarray(data.chelsea()), IMAGE)[np.newaxis]


def top_label(logits: np.ndarray) -> str:
    """The default model's ImageNet label for one row of logits."""
    from inferd.zoo.efficientnet_lite0 import imagenet_labels

    return imagenet_labels()[int(logits.argmax())]


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def chelsea_png() -> bytes:
    from skimage import data

    return encode(data.chelsea(), "PNG")


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    from skimage import data

    return encode(data.coffee(), "JPEG")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving the real app on 127.0.0.1 in a background thread, configured as `inferd serve` runs it."""

    def __init__(self, settings: object, *, start_timeout_s: float = 60) -> None:
        import uvicorn

        from inferd.serve import create_app
        from inferd.serve.process import uvicorn_config

        self.port = free_port()
        self.app = create_app(settings)  # type: ignore[arg-type]
        config = uvicorn_config(self.app, settings, host="127.0.0.1", port=self.port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.start_timeout_s = start_timeout_s  # loading compiles every model in the repository first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(default_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=default_repository)) as live:
        yield live


def samples(metrics_text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The values of one Prometheus series in an exposition, by label set."""
    return {frozenset(s.labels.items()): s.value for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == name}
