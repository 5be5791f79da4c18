"""The package's network as a PyTorch module, the form Core ML's converter reads.

Rebuilding from the package's source factory gives the cleanest graph (the
author's own modules), but only for factories inside inferd (a manifest is data:
importing a module it names would run arbitrary code) and only for packages
whose weights are still the source's (a compressed package's are not). Anything
else is rebuilt from `model.onnx` through onnx2torch. Either way the module is
checked against the package's ONNX graph, so the export is of *this* package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from inferd.export.errors import ONNX_ADVICE, ExportError
from inferd.package import ModelPackage
from inferd.types import ImageType, InputType

Source = Literal["auto", "factory", "onnx"]
TRUSTED_FACTORIES = "inferd."


@dataclass
class Network:
    """A torch module computing the package's graph, and how it was obtained."""

    module: Any
    origin: str
    capture: tuple[str, ...]
    """Ways to capture its graph for Core ML, best first: "export" (torch.export) and/or "trace" (TorchScript)."""
    nodes: dict[str, str] = field(default_factory=dict)
    """For a network rebuilt from ONNX: each top-level submodule's ONNX node, as "node 'name' (OpType)"."""


def rebuild(package: ModelPackage, source: Source | Any = "auto") -> Network:
    """`source` is "auto", "factory", "onnx", or the network itself as a torch module (checked all the same)."""
    if not isinstance(source, str):
        import torch

        if not isinstance(source, torch.nn.Module):
            raise ExportError(f"source must be auto, factory, onnx or a torch.nn.Module, not {type(source).__name__}")
        return Network(source.eval(), f"the given {type(source).__name__} module", ("export", "trace"))
    factory = package.manifest.source.factory
    usable, why_not = _factory_usable(package)
    if source == "factory" and not usable:
        raise ExportError(f"cannot rebuild {package.manifest.name} from its PyTorch source: {why_not}; use source='onnx'")
    if source in ("auto", "factory") and usable:
        assert factory is not None
        module_name, _, function = factory.partition(":")
        try:
            module = getattr(importlib.import_module(module_name), function)()
        except (ImportError, AttributeError) as exc:
            if source == "factory":
                raise ExportError(f"the source factory {factory} is not importable here: {exc}") from exc
        else:
            return Network(module.eval(), f"pytorch factory {factory}", ("export", "trace"))
    from inferd.export.from_onnx import to_torch

    module, nodes = to_torch(package.onnx_model)
    # onnx2torch modules compute shapes from tensors: torch.export refuses that, tracing bakes it in.
    return Network(module, "onnx2torch from model.onnx", ("trace",), nodes)


def _factory_usable(package: ModelPackage) -> tuple[bool, str]:
    manifest = package.manifest
    if not manifest.source.factory:
        return False, "its manifest names no source factory"
    if not manifest.source.factory.startswith(TRUSTED_FACTORIES):
        return False, f"its factory {manifest.source.factory} is outside inferd and is not imported"
    if manifest.compression:
        steps = ", ".join(step.kind for step in manifest.compression)
        return False, (f"it was compressed ({steps}) and the factory rebuilds the uncompressed weights; export the "
                       "uncompressed package and compress with compress=... instead")
    return True, ""


def example_inputs(package: ModelPackage, order: list[str]) -> dict[str, np.ndarray]:
    """Batch-1 inputs in the range the network sees: images as preprocessed pixels, tensors as noise."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name in order:
        spec: InputType = package.manifest.input(name)
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if isinstance(spec, ImageType):
            scale, bias = _per_channel(spec.scale, spec.channels), _per_channel(spec.bias, spec.channels)
            axis_shape = (1, -1, 1, 1) if spec.channel_layout == "NCHW" else (1, 1, 1, -1)
            pixels = rng.uniform(0, 255, shape)
            feeds[name] = (pixels * scale.reshape(axis_shape) + bias.reshape(axis_shape)).astype(np.float32)
        elif spec.dtype.startswith(("float", "bfloat")):
            feeds[name] = rng.standard_normal(shape).astype(np.float32 if spec.dtype == "bfloat16" else spec.dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def _per_channel(value: float | tuple[float, ...], channels: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    return np.broadcast_to(values, (channels,)).copy()


def check_equivalent(network: Network, package: ModelPackage, order: list[str]) -> float:
    """Largest output difference between the module and ONNX Runtime on the package; ExportError past tolerance."""
    import torch

    from inferd.convert.fidelity import run_onnx_reference

    feeds = example_inputs(package, order)
    reference = run_onnx_reference(package.onnx_model, feeds)
    with torch.inference_mode():
        result = network.module(*(torch.from_numpy(feeds[name]) for name in order))
    outputs = as_tuple(result)
    if len(outputs) != len(reference):
        raise ExportError(f"the rebuilt network ({network.origin}) returns {len(outputs)} outputs, the package "
                          f"{len(reference)}: it is not the package's network")
    tolerance = 1e-3 if package.manifest.precision == "fp32" else 2e-2
    worst = 0.0
    for ref, got in zip(reference, outputs, strict=True):
        got_np = got.detach().float().numpy()
        if got_np.shape != ref.shape:
            raise ExportError(f"the rebuilt network ({network.origin}) gives shape {got_np.shape}, the package {ref.shape}")
        diff = float(np.max(np.abs(got_np - ref.astype(np.float32)), initial=0.0))
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, float(np.max(np.abs(ref), initial=0.0))):
            raise _differs(network, package, feeds, diff, tolerance)
    return worst


def _differs(network: Network, package: ModelPackage, feeds: dict[str, np.ndarray], diff: float,
             tolerance: float) -> ExportError:
    if not network.nodes:
        return ExportError(f"the rebuilt network ({network.origin}) differs from the package's model.onnx by {diff:.3g}: "
                           "the package's weights are not the source's; export with source='onnx'")
    from inferd.export.from_onnx import first_divergence

    node = first_divergence(network.module, package.onnx_model, feeds, tolerance)
    return ExportError(f"{network.origin} computes differently from ONNX Runtime (by {diff:.3g})"
                       f"{f', first at {node}: onnx2torch converts that op inexactly' if node else ''}; {ONNX_ADVICE}")


def as_tuple(result: Any) -> tuple[Any, ...]:
    if isinstance(result, dict):
        return tuple(result.values())
    if isinstance(result, (tuple, list)):
        return tuple(result)
    return (result,)
