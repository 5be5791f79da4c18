"""The API document tells the truth (issue 18, item 2), checked from outside on a real server on 127.0.0.1.

* schemathesis (`--checks all`) on every operation finds no 5xx, no status the document leaves out, no response
  that breaks its schema and no request the schema allows that the server refuses, nor one it forbids that the
  server takes;
* OPTIONS and 405 list every method a path serves;
* `/docs` and `/redoc` load everything from the server itself, and render in a headless browser that can reach
  nothing else;
* real inference bodies, JSON and binary, fit the V2 schemas, and bodies the schemas refuse the server refuses.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import numpy as np
import pytest
from conftest import LiveServer

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MODELS = ("efficientnet-lite0", "minilm-l6")


@pytest.fixture(scope="module")
def api(default_repository: Path) -> Iterator[LiveServer]:
    """A server of its own: schemathesis changes the log settings and loads models, which other tests must not see."""
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=default_repository, access_log=False)) as live:
        yield live


@pytest.fixture(scope="module")
def document(api: LiveServer) -> dict:
    return httpx.get(f"{api.url}/openapi.json").json()


# -- schemathesis ---------------------------------------------------------------------------------------------

# Every check is on unless the config turns it off, as `--checks all` does; named on the command line instead, they
# would override the per-operation exceptions below. Statuses schemathesis's defaults do not count as what they are
# here, each declared in the document:
# 504 answers a deadline the request itself set (timeout_ms=1 cannot be met), not a server fault;
# 413 refuses data over a limit (a text past MAX_TEXT_CHARS, more rows than max_request_rows), as 400 refuses the rest.
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


def _schemathesis(url: str, tmp_path: Path, *options: str, config: str = CONFIG) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config)
    command = [str(SCHEMATHESIS), "--config-file", str(config_file), "--no-color", "run", f"{url}/openapi.json",
               "--generation-deterministic", "--workers", "1", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"SCHEMATHESIS_HOOKS": str(HOOKS), "PATH": str(SCHEMATHESIS.parent),
                               "PYTHONPATH": str(HOOKS.parent.parent)})


def _figures(output: str) -> str:
    """The summary's counts, for the test log (operations tested, test cases generated, failures)."""
    return " | ".join(line.strip() for line in output.splitlines()
                      if re.search(r"Tested:|generated|passed|failures? in|Selected:", line))


UNLOAD = "/v2/repository/models/{model}/unload"

# Schemathesis sends the items of an array of files as form fields without a file name, which a multipart server
# (Starlette) reads as text, not files: the batch route then answers 400 to images schemathesis meant as files.
# Its answers to real files are test_server.py's; every other check still runs on it.
#
# A V2 inference body the protocol's schema allows may not fit the model named in the path (its input names,
# values that fill the shape), which no JSON Schema of the protocol can tie to the path: refusing it is right.
# The schema's own rules are held to the server by test_inputs_the_schema_refuses_the_server_refuses.
PROTOCOL_NOT_MODEL = """
[[operations]]
include-path = "/predict/{model}/batch"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.enabled = false
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_any_operation(api: LiveServer, tmp_path: Path) -> None:
    """Every operation, with values drawn from the document and from what the server answered (so the real models'
    names come up too). The unload runs last, on its own: it takes the models under test away from whatever runs
    after it; they are loaded back at the end.

    The stateful phase is left out: with no links in the document it chains calls by the same names, which the
    fuzzing phase already draws from the answers.
    """
    options = ("--phases", "examples,coverage,fuzzing", "--max-examples", "25")
    result = _schemathesis(api.url, tmp_path, *options, "--exclude-path", UNLOAD, config=CONFIG + PROTOCOL_NOT_MODEL)
    print(_figures(result.stdout))
    assert result.returncode == 0, result.stdout[-12000:]
    unloads = _schemathesis(api.url, tmp_path, *options, "--include-path", UNLOAD)
    print(_figures(unloads.stdout))
    for model in MODELS:
        assert httpx.post(f"{api.url}/v2/repository/models/{model}/load", timeout=120).status_code == 200
    assert unloads.returncode == 0, unloads.stdout[-12000:]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_schemathesis_finds_nothing_on_the_models_served(api: LiveServer, model: str, tmp_path: Path) -> None:
    """The read-only operations on each real model, whose answers are then real metadata, configs and statistics.

    Inference on a named model is not here: a body the generic V2 schema allows may not fit this model's
    inputs (their names, and values that fill the shape), which no JSON Schema of the protocol can tie to the path;
    real inference bodies are checked against the document in `test_real_inference_fits_the_document`.
    """
    config = f'{CONFIG}\n[parameters]\n"path.model" = "{model}"\n"path.version" = "1"\n'
    result = _schemathesis(api.url, tmp_path, "--phases", "examples,coverage,fuzzing", "--max-examples", "15",
                           "--exclude-method", "POST", "--include-path-regex", r"\{model\}", config=config)
    print(_figures(result.stdout))
    assert result.returncode == 0, result.stdout[-12000:]
    assert "Tested: 8" in result.stdout


# -- methods ---------------------------------------------------------------------------------------------------


def test_options_and_405_list_every_method_of_a_path(api: LiveServer) -> None:
    options = httpx.options(f"{api.url}/v2/logging")
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    refused = httpx.put(f"{api.url}/v2/logging")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert "GET, HEAD, OPTIONS, POST" in refused.json()["error"]
    assert httpx.request("DELETE", f"{api.url}/v2/models/{MODELS[0]}/infer").headers["allow"] == "OPTIONS, POST"
    assert httpx.options(f"{api.url}/no/such/path").status_code == 404


def test_every_operation_declares_its_statuses_with_the_error_body(document: dict) -> None:
    operations = [(path, op) for path, methods in document["paths"].items() for op in methods.values()]
    assert len(operations) >= 31
    for path, operation in operations:
        statuses = set(operation["responses"])
        assert "422" not in statuses
        assert {"200", "400", "408", "413", "415"} <= statuses
        for status, answer in operation["responses"].items():
            if status != "200" and (path, status) != ("/health", "503"):  # /health says why it is not ready
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "403", "404", "408", "413", "415", "429", "503", "504"}
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["429"]["headers"]["Retry-After"]["required"]


def test_an_api_key_is_declared_where_it_is_needed(default_repository: Path) -> None:
    from fastapi.testclient import TestClient

    from inferd.serve import ServerSettings, create_app

    client = TestClient(create_app(ServerSettings(repository=default_repository, api_key="k")))
    document = client.get("/openapi.json").json()
    for page in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/redoc.standalone.js"):
        assert client.get(page).status_code == 200, page  # a browser sends no key for what a page loads
    assert client.get("/v2/models/stats").status_code == 401
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "401" in document["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
    assert "401" not in document["paths"]["/v2/health/ready"]["get"]["responses"]


# -- docs pages ------------------------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_server(api: LiveServer, page: str) -> None:
    html = httpx.get(f"{api.url}{page}").text
    assert not re.findall(r"https?://", html), "the page names another host"
    parser = _Links()
    parser.feed(html)
    assert len(parser.links) >= 2  # the bundle and the favicon at least
    for link in parser.links:
        url = urljoin(f"{api.url}{page}", link)
        assert urlsplit(url).netloc == urlsplit(api.url).netloc
        asset = httpx.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, link
        if link.endswith(".css"):
            assert all(ref.startswith(("data:", "#")) for ref in re.findall(r'url\("?([^")]*)', asset.text))
    assert httpx.get(f"{api.url}/openapi.json").status_code == 200


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.parametrize(("page", "rendered"), [("/docs", "opblock-summary-path"), ("/redoc", "operation-type post")])
def test_docs_render_in_a_browser_that_can_reach_only_the_server(
        api: LiveServer, page: str, rendered: str, tmp_path: Path) -> None:
    """Chromium resolves every host but 127.0.0.1 to nothing, as on a machine without internet access."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    dom = subprocess.run([*flags, "--dump-dom", f"{api.url}{page}"], capture_output=True, text=True, timeout=120)
    assert rendered in dom.stdout, dom.stderr[-2000:]
    for path in ("/v2/models/{model}/infer", "/predict/{model}", "/v2/logging"):
        assert path in dom.stdout
    screenshot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", f"{api.url}{page}"], capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.std() > 10, "the screenshot is blank"


# -- V2 bodies -------------------------------------------------------------------------------------------------


def _validator(document: dict, component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{component}",
                                            "components": document["components"]})


def test_real_inference_fits_the_document(api: LiveServer, document: dict, chelsea_tensor: np.ndarray) -> None:
    requests = _validator(document, "V2InferenceRequest")
    responses = _validator(document, "V2InferenceResponse")
    text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a cat", "stock market"]}],
            "outputs": None, "id": "7"}
    requests.validate(text)
    answer = httpx.post(f"{api.url}/v2/models/minilm-l6/infer", json=text)
    assert answer.status_code == 200
    responses.validate(answer.json())
    # Binary both ways: the JSON part fits the same schemas, the header says where it ends.
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(chelsea_tensor.shape),
                                     "parameters": {"binary_data_size": chelsea_tensor.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    requests.validate(json.loads(header))
    answer = httpx.post(f"{api.url}/v2/models/efficientnet-lite0/infer",
                        content=header + chelsea_tensor.astype("<f4").tobytes(),
                        headers={"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    json_part = int(answer.headers["inference-header-content-length"])
    responses.validate(json.loads(answer.content[:json_part]))
    (logits,) = struct.iter_unpack("<1000f", answer.content[json_part:])
    assert len(logits) == 1000


@pytest.mark.parametrize("tensor", [
    {"name": "text", "datatype": "INT8", "shape": [1], "data": [128]},
    {"name": "text", "datatype": "FP16", "shape": [1], "data": [65520.0]},
    {"name": "text", "datatype": "FP32", "shape": [1], "data": ["nan"]},
    {"name": "text", "datatype": "BOOL", "shape": [1], "data": [1]},
    {"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]},
    {"name": "text", "datatype": "FP32", "shape": [-1], "data": []},
    {"name": "text", "datatype": "FP32", "shape": [1] * 33, "data": [1.0]},
    {"name": "", "datatype": "FP32", "shape": [1], "data": [1.0]},
    {"name": "text", "datatype": "fp32", "shape": [1], "data": [1.0]},
    {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"], "parameters": {"binary_data_size": -1}},
])
def test_inputs_the_schema_refuses_the_server_refuses(api: LiveServer, document: dict, tensor: dict) -> None:
    body = {"inputs": [tensor]}
    assert not _validator(document, "V2InferenceRequest").is_valid(body)
    answer = httpx.post(f"{api.url}/v2/models/minilm-l6/infer", json=body)
    assert answer.status_code == 400, answer.text


def test_float_bounds_are_where_the_decoder_overflows(document: dict) -> None:
    """The schema's bound for FP16 is the decoder's, not FP16's largest value: 65519 rounds to 65504, 65520 overflows."""
    from inferd.serve.v2.decode import decode_request

    fp16 = _validator(document, "V2InputFP16")
    for value, fits in ((65519.0, True), (65520.0, False), (-65519.0, True), (-65520.0, False)):
        body = {"name": "x", "datatype": "FP16", "shape": [1], "data": [value]}
        assert fp16.is_valid(body) is fits
        if fits:
            decode_request(json.dumps({"inputs": [body]}).encode())
        else:
            with pytest.raises(Exception, match="out of range"):
                decode_request(json.dumps({"inputs": [body]}).encode())
