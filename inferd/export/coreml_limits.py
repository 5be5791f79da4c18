"""What Core ML's on-device runtime refuses although coremltools writes it, checked before anything is saved.

coremltools converts these without complaint, and the app then fails to load
the whole model on the device ("Padding for more than two dimensions only
supports `constant` mode", coremltools issues 2571 and 2576), which nothing on
Linux would show. So the export refuses them here, saying what to do instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from inferd.export.errors import UnsupportedOperation

_EDGE_MODES = ("reflect", "replicate")


def check(spec: Any, from_onnx: bool) -> None:
    """Raise UnsupportedOperation for the first op of the ML program `spec` that the runtime would refuse."""
    main = spec.mlProgram.functions["main"]
    operations = list(_operations(main.block_specializations[main.opset]))
    constants = {op.outputs[0].name: op.attributes["val"].immediateValue.tensor for op in operations if op.type == "const"}
    for op in operations:
        if op.type != "pad":
            continue
        mode, amounts = (constants.get(op.inputs[key].arguments[0].name) for key in ("mode", "pad"))
        if mode is None or amounts is None or mode.strings.values[0] not in _EDGE_MODES:
            continue
        pads = list(amounts.ints.values)
        rank = len(pads) // 2
        axes = [axis - rank for axis in range(rank - 2) if pads[2 * axis] or pads[2 * axis + 1]]  # from the end
        if axes:
            instead = ("pad only the last two axes in the model" if from_onnx else
                       "export from model.onnx instead (source='onnx', --source onnx), where inferd rebuilds such a "
                       "pad from slices Core ML runs, or pad only the last two axes in the model")
            raise UnsupportedOperation(
                f"Core ML op {op.outputs[0].name!r} pads axes {axes} (counted from the last) in "
                f"{mode.strings.values[0]} mode, and Core ML's runtime pads only the last two axes in that mode (the "
                f"device would refuse to load the model); {instead}"
            )


def _operations(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)
