"""Which node of the user's network an export failure happened on, so that the error can name it.

The export runs the network through PyTorch (eager, then a trace) and
coremltools; neither says in its exception which node failed, but the failing
module, or coremltools' node, is in hand in some frame of the traceback. For a
network rebuilt from ONNX, a module is one ONNX node, named as in model.onnx.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterator
from typing import Any

from inferd.errors import InferdError
from inferd.export.errors import ONNX_ADVICE, ExportError, UnsupportedOperation, first_line
from inferd.export.torch_source import Network


@contextlib.contextmanager
def failures(network: Network, doing: str) -> Iterator[None]:
    """Turn a library's exception while `doing` something with `network` into an ExportError naming the node."""
    try:
        yield
    except InferdError:
        raise
    except Exception as exc:
        where = failing_module(exc, network)
        todo = advice(network) if where else "keep this model on inferd's own runtime (inferd serve) and report the failure"
        raise ExportError(f"{network.origin} failed while {doing}{f' at {where}' if where else ''}: "
                          f"{type(exc).__name__}: {first_line(exc)}; {todo}") from exc


def failing_module(exc: BaseException, network: Network) -> str | None:
    """The innermost module of `network` that was running when `exc` was raised, described for the user."""
    names = {id(module): name for name, module in network.module.named_modules() if name}
    innermost = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):  # outermost frame first
        name = names.get(id(frame.f_locals.get("self")))
        if name is not None:
            innermost = name
    return None if innermost is None else describe(innermost, network)


def describe(module_name: str, network: Network) -> str:
    """An ONNX node as "node 'x' (Op)"; a module of a PyTorch network by its path and class."""
    top = module_name.split(".")[0]
    if top in network.nodes:
        return network.nodes[top]
    module = network.module.get_submodule(module_name)
    return f"module {module_name!r} ({type(module).__name__})"


def advice(network: Network) -> str:
    """What a user can do about a node the export cannot take, depending on where the network came from."""
    if network.nodes:
        return ONNX_ADVICE
    return "replace that op in the PyTorch module, or export from model.onnx instead (source='onnx', --source onnx)"


def coreml_failure(exc: Exception, captured: Any, network: Network, version: str) -> ExportError:
    """coremltools' failure on the captured graph, with the node it was converting."""
    if isinstance(exc, NotImplementedError):
        return _unsupported(exc, captured, network)
    node = next((frame.f_locals["node"] for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__)))
                 if hasattr(frame.f_locals.get("node"), "kind")), None)
    where = f" at {_locate(captured, node.kind, network, node.name)}" if node is not None else ""
    return ExportError(
        f"coremltools {version} could not convert {network.origin}{where}: {type(exc).__name__}: {first_line(exc)}; "
        f"{advice(network)}, or keep this model on inferd's own runtime (inferd serve)"
    )


def _unsupported(exc: NotImplementedError, captured: Any, network: Network) -> ExportError:
    """Name the op and the node coremltools has no conversion for, and what to try."""
    message = str(exc)
    match = re.search(r"op '([^']+)' not implemented", message) or re.search(r"Unsupported fx node (\S+?),", message)
    if match is None:
        return ExportError(f"coremltools cannot convert the network: {message}")
    op = match.group(1)
    return UnsupportedOperation(
        f"Core ML has no conversion for the PyTorch op {op!r} (node {_locate(captured, op, network)}); try: replace it "
        "in the model with supported ops, register a composite conversion with coremltools' @register_torch_op, or "
        "keep this model on inferd's own runtime (inferd serve)"
    )


def _locate(captured: Any, op: str, network: Network, output: str | None = None) -> str:
    """The node of kind `op` (producing `output` where known): its torch.export name or TorchScript kind, and where from.

    torch.export nodes carry the user's source line; TorchScript nodes the
    module they ran in, which for a network rebuilt from ONNX is the ONNX node.
    """
    graph = getattr(captured, "graph", None)
    if graph is not None and hasattr(graph, "nodes") and callable(getattr(captured, "run_decompositions", None)):
        for node in graph.nodes:
            if node.name in (op, output):
                frames = [line.strip() for line in (node.meta.get("stack_trace") or "").splitlines() if line.strip()]
                where = f" at {frames[-2]}: {frames[-1]}" if len(frames) >= 2 else ""
                return f"{node.name} = {node.target}{where}"
        return op
    for node in captured.inlined_graph.nodes():
        outputs = [value.debugName() for value in node.outputs()]
        if node.kind().split("::")[-1] == op.split("::")[-1] and (output is None or output in outputs):
            scope = node.scopeName().rpartition("__module.")[2].removeprefix("network.")
            onnx_node = network.nodes.get(scope.split(".")[0])
            if onnx_node:  # its source line would be onnx2torch's
                return f"%{outputs[0]} = {node.kind()} from ONNX {onnx_node}"
            frames = [line for line in node.sourceRange().splitlines() if "torch/nn/modules" not in line]
            where = f" at {frames[0].strip()}" if frames else ""
            return f"%{outputs[0]} = {node.kind()}{f' in {scope}' if scope else ''}{where}"
    return op
