"""A V2 request is held to its model's contract once (issue 17, item 3), on the real server and models.

The data plane checks names, datatypes and shapes in V2's terms and hands the batcher arrays it need not check
again; the simple REST face, which has no protocol checks of its own, leaves its one check to the batcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_LABELS, LiveServer, top_label

IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "minilm-l6"


def count_checks(server: LiveServer, model: str, monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any]]:
    """Every call of the model's batch-inputs check from now on, each still doing its real work."""
    inputs = server.app.state.repository.get(model).batcher.inputs
    check: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] = inputs.check
    seen: list[Mapping[str, Any]] = []

    def counted(feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        seen.append(feeds)
        return check(feeds)

    monkeypatch.setattr(inputs, "check", counted)
    return seen


@pytest.fixture(scope="module")
def client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"), connection_timeout=30, network_timeout=60)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_v2_tensor_request_is_checked_once(server: LiveServer, client: triton.InferenceServerClient,
                                             chelsea_tensor: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                             binary: bool) -> None:
    checks = count_checks(server, IMAGE_MODEL, monkeypatch)
    image = triton.InferInput("image", list(chelsea_tensor.shape[1:]), "FP32")  # no batch axis: conformed once
    image.set_data_from_numpy(chelsea_tensor[0], binary_data=binary)
    logits = client.infer(IMAGE_MODEL, [image]).as_numpy("logits")
    assert logits.shape == (1, 1000) and top_label(logits[0]) in CAT_LABELS
    assert checks == []


def test_a_v2_text_request_is_checked_once(server: LiveServer, client: triton.InferenceServerClient,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    checks = count_checks(server, TEXT_MODEL, monkeypatch)
    texts = triton.InferInput("text", [2], "BYTES")
    texts.set_data_from_numpy(np.array([b"a cat", b"a kitten"], dtype=object))
    embeddings = client.infer(TEXT_MODEL, [texts]).as_numpy("embedding")
    assert embeddings.shape[0] == 2 and float(embeddings[0] @ embeddings[1]) > 0.5
    assert checks == []


def test_the_one_v2_check_still_refuses_a_wrong_shape(server: LiveServer, client: triton.InferenceServerClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    checks = count_checks(server, IMAGE_MODEL, monkeypatch)
    image = triton.InferInput("image", [1, 3, 100, 100], "FP32")
    image.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException, match="has size 100 on axis 2 but the model needs 224"):
        client.infer(IMAGE_MODEL, [image])
    assert checks == []


def test_rest_faces_leave_their_one_check_to_the_batcher(server: LiveServer, chelsea_png: bytes,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    image_checks = count_checks(server, IMAGE_MODEL, monkeypatch)
    text_checks = count_checks(server, TEXT_MODEL, monkeypatch)
    predicted = httpx.post(f"{server.url}/predict/{IMAGE_MODEL}", files={"image": ("cat.png", chelsea_png)}, timeout=60)
    assert predicted.status_code == 200 and len(image_checks) == 1
    embedded = httpx.post(f"{server.url}/embed/{TEXT_MODEL}", json=["a cat"], timeout=60)
    assert embedded.status_code == 200 and text_checks == []  # /embed checks its texts as it reads the body
