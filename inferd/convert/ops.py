"""Find the operators a model uses that the runtimes cannot run, and say which node and what to try.

Two places catch them: a scan of the graph against the ONNX operator schemas
(ops that are not ONNX at all: a TensorFlow op tf2onnx left behind, a custom
domain), and ONNX Runtime itself when it builds a session (ONNX ops it has no
kernel for at that opset and type). Both name the op and the node, because
"the model failed to load" does not tell a user what to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import onnx
import onnxruntime as ort

from inferd.errors import ConversionError

# Domains whose operators ONNX Runtime implements without extra libraries.
_ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}
_RUNTIME_DOMAINS = {"com.microsoft"}
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_NOT_REGISTERED = re.compile(r"(?:In Node, \(\"([^\"]*)\", (\w+), \"([^\"]*)\".*)?No Op registered for (\w+)")

_ADVICE = {
    "tensorflow": "tf2onnx {version} has no ONNX conversion for it; try a newer opset (--opset 18), "
                  "or rewrite that part of the model with ops tf2onnx converts (see its support_status.md)",
    "onnx": "it is not an ONNX operator; re-export the model with standard ONNX ops (replace the op in the "
            "source model, or export it as an ONNX local function)",
}


def check_supported_ops(model: onnx.ModelProto, *, framework: str = "onnx") -> None:
    """Raise ConversionError naming every op (and its first node) that no runtime here can run."""
    opsets = {o.domain or "": o.version for o in model.opset_import}
    functions = {(f.domain, f.name) for f in model.functions}
    unknown: dict[str, str] = {}
    for node in _walk(model.graph):
        domain = node.domain or ""
        if (domain, node.op_type) in functions or domain in _RUNTIME_DOMAINS:
            continue
        if domain in _ONNX_DOMAINS:
            version = opsets.get(domain if domain != "ai.onnx" else "", opsets.get("", 1))
            if onnx.defs.has(node.op_type, version, domain):
                continue
        label = f"{domain}.{node.op_type}" if domain else node.op_type
        unknown.setdefault(label, node.name or f"(unnamed, output {node.output[0] if node.output else '?'})")
    if unknown:
        raise unsupported_error(unknown, framework)


def unsupported_error(ops: dict[str, str], framework: str) -> ConversionError:
    listing = ", ".join(f"{op} (node {node!r})" for op, node in ops.items())
    advice = _ADVICE.get(framework, _ADVICE["onnx"]).format(version=_tf2onnx_version())
    plural = "these ops" if len(ops) > 1 else "this op"
    return ConversionError(f"the model uses {plural}, which ONNX Runtime and OpenVINO cannot run: {listing}; {advice}")


def check_runs(model: onnx.ModelProto, *, framework: str = "onnx") -> ort.InferenceSession:
    """Open the model in ONNX Runtime (the reference runtime), translating its refusals into the op and node."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, NotImplemented, InvalidGraph...)
        raise runtime_error(str(exc), framework) from None


def runtime_error(message: str, framework: str) -> ConversionError:
    kernel = _NO_KERNEL.search(message)
    if kernel:
        op, version, node = kernel.groups()
        return ConversionError(
            f"ONNX Runtime {ort.__version__} has no kernel for op {op} (opset {version}) with the input types of "
            f"node {node!r}; try another opset (--opset), cast the node's inputs to float32 in the source model, "
            "or replace the op"
        )
    registered = _NOT_REGISTERED.search(message)
    if registered:
        node, op = registered.group(1), registered.group(4)
        return unsupported_error({op: node or "?"}, framework)
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return ConversionError(f"ONNX Runtime {ort.__version__} cannot load the converted model: {first_line}")


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in the bodies of If, Loop and Scan."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _walk(subgraph)


def _tf2onnx_version() -> str:
    try:
        return version("tf2onnx")
    except PackageNotFoundError:
        return ""
