"""`"prune:0.5,palettize:4"` → coremltools.optimize.coreml passes on an exported ML program.

The compressed weights stay compressed on the device: Core ML decodes them with
`constexpr_*` ops (lookup tables, affine dequantization, sparse masks) as it
loads the model, so the .mlpackage and the memory it maps both shrink. The
specification is checked whole, against the deployment target too, before the
slow conversion starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferd.export.errors import ExportError
from inferd.optimize.pipeline import Step as PipelineStep
from inferd.optimize.pipeline import split_steps

SYNTAX = ("palettize:BITS[:GROUP] (BITS 1, 2, 3, 4, 6 or 8), quantize:8 or quantize:4, prune:SPARSITY or prune:N:M, "
          "joined by commas in the order to apply them, e.g. prune:0.5,palettize:4")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
IOS18 = "iOS18/macOS15"


@dataclass(frozen=True)
class Step(PipelineStep):
    """A Core ML compression step: the pipeline syntax of `inferd optimize`, with Core ML's own checks."""

    def needs_ios18(self) -> str | None:
        """Why this step alone needs iOS18/macOS15 operations, or None."""
        if self.kind == "palettize" and len(self.arguments) == 2:
            return "grouped-channel palettization"
        if self.kind == "quantize" and self.arguments[0] == 4:
            return "4-bit quantization"
        return None


def parse(spec: str) -> list[Step]:
    arity = {"palettize": (1, 2), "quantize": (1,), "prune": (1, 2)}
    return [_checked(Step(step.kind, step.arguments), text)
            for step, text in split_steps(spec, SYNTAX, ExportError, arity)]


def _checked(step: Step, text: str) -> Step:
    if step.kind == "palettize":
        bits, *group = step.arguments
        if bits not in PALETTE_BITS:
            raise ExportError(f"{text!r}: Core ML palettizes to {', '.join(map(str, PALETTE_BITS))} bits, not {bits:g}")
        if group and (not group[0].is_integer() or group[0] < 1):
            raise ExportError(f"{text!r}: the group size is a number of output channels, a whole number ≥ 1")
    elif step.kind == "quantize":
        if step.arguments[0] not in (8, 4):
            raise ExportError(f"{text!r}: Core ML quantizes weights linearly to 8 or 4 bits, not {step.arguments[0]:g}")
    elif len(step.arguments) == 1:
        if not 0 < step.arguments[0] < 1:
            raise ExportError(f"{text!r}: the sparsity is the fraction of weights set to zero, between 0 and 1")
    else:
        n, m = step.arguments
        if not (n.is_integer() and m.is_integer() and 0 < n < m):
            raise ExportError(f"{text!r}: N:M sparsity zeroes N of every M weights, whole numbers with 0 < N < M")
    return step


def check_target(steps: list[Step], target: str, target_is_ios18: bool) -> None:
    """Refuse, before converting, compressions whose Core ML operations the deployment target lacks."""
    if target_is_ios18:
        return
    reasons = [f"{reason} ({step})" for step in steps if (reason := step.needs_ios18())]
    if len(steps) > 1:
        reasons.append(f"joint compression ({','.join(map(str, steps))})")
    if reasons:
        raise ExportError(
            f"{'; '.join(reasons)} needs Core ML operations from {IOS18} on, but the deployment target is {target}; "
            "pass --target macOS15 or iOS18 or later (minimum_deployment_target=...), or compress less"
        )


def apply(mlmodel: Any, steps: list[Step]) -> Any:
    """Each step in order; every step after the first compresses the previous one's output further (joint)."""
    import coremltools.optimize.coreml as cto

    for index, step in enumerate(steps):
        joint = index > 0
        try:
            if step.kind == "palettize":
                bits, *group = step.arguments
                palette = cto.OpPalettizerConfig(
                    mode="kmeans", nbits=int(bits),
                    granularity="per_grouped_channel" if group else "per_tensor",
                    group_size=int(group[0]) if group else 32,
                )
                mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=palette),
                                                joint_compression=joint)
            elif step.kind == "quantize":
                linear = (cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
                          if step.arguments[0] == 8 else
                          cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                      block_size=32))
                mlmodel = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=linear),
                                                      joint_compression=joint)
            else:
                pruner = (cto.OpMagnitudePrunerConfig(target_sparsity=step.arguments[0])
                          if len(step.arguments) == 1 else
                          cto.OpMagnitudePrunerConfig(n_m_ratio=(int(step.arguments[0]), int(step.arguments[1]))))
                mlmodel = cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=pruner),
                                            joint_compression=joint)
        except ValueError as exc:  # coremltools' own refusal of a combination
            raise ExportError(f"coremltools cannot apply {step}: {exc}") from exc
    return mlmodel
