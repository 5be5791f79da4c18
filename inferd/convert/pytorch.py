"""PyTorch → ModelPackage through `torch.onnx.export`, checked against eager PyTorch.

The dynamo exporter is tried first because it is the maintained path and handles
modern models; the TorchScript exporter is the fallback for models dynamo cannot
trace (data-dependent control flow that scripting tolerates). Whichever succeeds
is recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx

from inferd.convert.fidelity import compare_outputs, run_onnx_reference
from inferd.errors import ConversionError, FidelityError
from inferd.manifest import Classifier, Manifest, Source
from inferd.package import ModelPackage
from inferd.types import ImageType, InputType, TensorType

Exporter = Literal["auto", "dynamo", "torchscript"]
_OPSET = 18


def convert_pytorch(
    model: Any,
    *,
    inputs: Sequence[InputType],
    outputs: Sequence[str] | None = None,
    classifier_labels: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    exporter: Exporter = "auto",
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
    source_factory: str | None = None,
) -> ModelPackage:
    """Export `model` to ONNX with a dynamic batch dimension and measure fidelity against eager PyTorch.

    Raises FidelityError when the converted outputs differ by more than `tolerance`
    (or disagree on the top-1 class) unless `allow_fidelity_loss` is set: a package
    that computes something else than its source must not ship by accident.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = model.eval()
    input_names = [spec.name for spec in inputs]
    samples = _sample_feeds(inputs, sample_inputs)
    example = tuple(torch.from_numpy(samples[name][:1]) for name in input_names)
    with torch.inference_mode():
        reference_out = _as_numpy_outputs(model(*(torch.from_numpy(samples[name]) for name in input_names)))
    output_names = list(outputs) if outputs else _default_output_names(len(reference_out), classifier_labels)
    if len(output_names) != len(reference_out):
        raise ConversionError(f"the model returns {len(reference_out)} outputs but {len(output_names)} names were given")

    proto, used_exporter = _export(model, example, input_names, output_names, exporter)
    converted_out = run_onnx_reference(proto, samples)
    fidelity = compare_outputs(
        reference_out,
        converted_out,
        reference_name=f"pytorch {torch.__version__} eager fp32",
        runtime_name="onnxruntime cpu fp32",
        tolerance=tolerance,
    )
    if not fidelity.passed and not allow_fidelity_loss:
        raise FidelityError(
            f"the converted model differs from PyTorch: max abs diff {fidelity.max_abs_diff:.3g} "
            f"(tolerance {tolerance:g}), top-1 agreement {fidelity.top1_agreement}; "
            "try exporter='torchscript' or 'dynamo', or pass allow_fidelity_loss=True to keep it anyway"
        )

    output_specs = [
        TensorType(name=name, shape=(-1, *out.shape[1:]), dtype=_dtype_name(out.dtype))
        for name, out in zip(output_names, reference_out, strict=True)
    ]
    meta = dict(metadata or {})
    manifest = Manifest(
        name=meta.pop("name", type(model).__name__.lower()),
        version=meta.pop("version", "1"),
        author=meta.pop("author", ""),
        license=meta.pop("license", ""),
        description=meta.pop("description", ""),
        source=Source(framework=f"pytorch ({used_exporter} exporter)", framework_version=torch.__version__,
                      factory=source_factory),
        inputs=[_dynamic_batch(spec) for spec in inputs],
        outputs=output_specs,
        classifier=Classifier(output=output_names[0], labels=list(classifier_labels)) if classifier_labels else None,
        fidelity=fidelity,
    )
    if meta:
        raise ConversionError(f"unknown metadata keys {sorted(meta)}; use name, version, author, license, description")
    return ModelPackage(manifest, model=proto)


def _export(
    model: Any, example: tuple[Any, ...], input_names: list[str], output_names: list[str], exporter: Exporter
) -> tuple[onnx.ModelProto, str]:
    import torch

    attempts: list[str] = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    for attempt in attempts:
        buffer = io.BytesIO()
        try:
            with _quiet_export():
                if attempt == "dynamo":
                    program = torch.onnx.export(
                        model, example, dynamo=True, input_names=input_names, output_names=output_names,
                        dynamic_axes=dynamic_axes, opset_version=_OPSET, verbose=False,
                    )
                    assert program is not None
                    return program.model_proto, attempt
                torch.onnx.export(
                    model, example, buffer, dynamo=False,  # type: ignore[arg-type]
                    input_names=input_names, output_names=output_names,
                    dynamic_axes=dynamic_axes, opset_version=17,
                )
            return onnx.load_from_string(buffer.getvalue()), attempt
        except Exception as exc:
            errors.append(f"{attempt}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    raise ConversionError("torch.onnx.export failed with every exporter tried:\n  " + "\n  ".join(errors))


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters print progress to stdout and warn through logging; converting is quiet unless it fails."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _sample_feeds(
    inputs: Sequence[InputType], sample_inputs: Sequence[Mapping[str, np.ndarray]] | None
) -> dict[str, np.ndarray]:
    """Stack user samples into one batch, or draw a reproducible random batch of 4 from each input's spec."""
    if sample_inputs:
        try:
            return {spec.name: np.stack([np.asarray(s[spec.name]) for s in sample_inputs]) for spec in inputs}
        except KeyError as exc:
            raise ConversionError(f"sample_inputs lack input {exc}; give a value for every input") from exc
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        shape = tuple(4 if i == 0 else (d if d > 0 else 8) for i, d in enumerate(spec.shape))
        if isinstance(spec, ImageType) or spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype if spec.dtype != "bfloat16" else "float32")
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
    return feeds


def _as_numpy_outputs(result: Any) -> list[np.ndarray]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result.detach().numpy()]
    if isinstance(result, Mapping):
        result = list(result.values())
    if isinstance(result, (tuple, list)) and all(isinstance(r, torch.Tensor) for r in result):
        return [r.detach().numpy() for r in result]
    raise ConversionError(f"the model returned {type(result).__name__}; inferd needs a tensor or a tuple/dict of tensors")


def _default_output_names(count: int, labels: Sequence[str] | None) -> list[str]:
    if count == 1:
        return ["logits" if labels else "output"]
    return [f"output_{i}" for i in range(count)]


def _dynamic_batch(spec: InputType) -> InputType:
    return spec.model_copy(update={"shape": (-1, *spec.shape[1:])})


def _dtype_name(dtype: np.dtype) -> Any:
    return np.dtype(dtype).name
