"""PyTorch → ModelPackage through `torch.onnx.export`, checked against eager PyTorch.

The dynamo exporter is tried first because it is the maintained path and handles
modern models; the TorchScript exporter is the fallback for models dynamo cannot
trace (data-dependent control flow that scripting tolerates). Whichever gives a
graph that runs and matches PyTorch is recorded in the manifest.

Every -1 in an input's shape becomes a dynamic axis. Exporters can silently bake
the example's sizes into a graph (dynamo specialises a batch of 1, TorchScript
tracing freezes a sequence length into reshapes), so the graph is checked on the
samples and again on a smaller batch cut shorter along every dynamic axis.
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

from inferd.convert.assemble import classifier_for
from inferd.convert.fidelity import combine, compare_outputs, run_onnx_reference
from inferd.convert.samples import representative_samples
from inferd.errors import ConversionError, FidelityError
from inferd.manifest import Fidelity, Manifest, Source
from inferd.package import ModelPackage
from inferd.types import ImageType, InputType, TensorType, TextType

Exporter = Literal["auto", "dynamo", "torchscript"]
_OPSET = 18
_EXPORT_ROWS = 2
"""Rows in the export example: with one, dynamo specialises the batch axis to 1 despite it being marked dynamic."""


def convert_pytorch(
    model: Any,
    *,
    inputs: Sequence[InputType],
    outputs: Sequence[str] | None = None,
    classifier_labels: Sequence[str] | None = None,
    activation: str | None = None,
    metadata: Mapping[str, str] | None = None,
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    exporter: Exporter = "auto",
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
    source_factory: str | None = None,
    assets: Mapping[str, str | os.PathLike[str]] | None = None,
) -> ModelPackage:
    """Export `model` to ONNX with dynamic batch (and every other -1) axes and measure fidelity against eager PyTorch.

    The model is called with one tensor per graph input, in order; a TextType
    stands for its token tensors (ids, attention mask, token types), and
    `sample_inputs` then give those tensors by name. `assets` are files to ship in
    the package, e.g. `{"tokenizer.json": path}` for a TextType's tokenizer. With
    `classifier_labels` the first output is the classifier's; `activation` says what
    turns its scores into probabilities, else the graph and PyTorch's outputs tell.

    Raises FidelityError when the converted outputs differ by more than `tolerance`
    (or disagree on the top-1 class) unless `allow_fidelity_loss` is set: a package
    that computes something else than its source must not ship by accident.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = model.eval()
    tensors = [tensor for spec in inputs for tensor in (spec.tensors if isinstance(spec, TextType) else (spec,))]
    missing_assets = [spec.tokenizer for spec in inputs
                      if isinstance(spec, TextType) and spec.tokenizer not in (assets or {})]
    if missing_assets:
        raise ConversionError(f"text inputs need their tokenizer files in the package; pass assets={{{missing_assets[0]!r}: "
                              "path_to_tokenizer_json}")
    input_names = [spec.name for spec in tensors]
    check_sets = _check_sets(tensors, _sample_feeds(inputs, sample_inputs))
    example = tuple(torch.from_numpy(_export_rows(check_sets[0][name])) for name in input_names)
    with torch.inference_mode():
        references = [_as_numpy_outputs(model(*(torch.from_numpy(feeds[name]) for name in input_names)))
                      for feeds in check_sets]
    output_names = list(outputs) if outputs else _default_output_names(len(references[0]), classifier_labels)
    if len(output_names) != len(references[0]):
        raise ConversionError(f"the model returns {len(references[0])} outputs but {len(output_names)} names were given")

    attempts: list[str] = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    proto, used_exporter, fidelity = _best_export(
        model, example, tensors, output_names, attempts, check_sets, references,
        tolerance=tolerance, allow_fidelity_loss=allow_fidelity_loss,
        reference_name=f"pytorch {torch.__version__} eager fp32",
    )

    output_specs = [
        TensorType(name=name, shape=_graph_shape(proto, name, out.shape), dtype=_dtype_name(out.dtype))
        for name, out in zip(output_names, references[0], strict=True)
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
        classifier=classifier_for(proto, output_specs, classifier_labels, output=output_names[0],
                                  activation=activation, sample_outputs=references[0]),
        fidelity=fidelity,
    )
    if meta:
        raise ConversionError(f"unknown metadata keys {sorted(meta)}; use name, version, author, license, description")
    return ModelPackage(manifest, model=proto, assets=assets,
                        samples=representative_samples(manifest.graph_inputs, sample_inputs))


def _best_export(
    model: Any, example: tuple[Any, ...], inputs: list[TensorType | ImageType], output_names: list[str],
    attempts: list[str], check_sets: list[dict[str, np.ndarray]], references: list[list[np.ndarray]],
    *, tolerance: float, allow_fidelity_loss: bool, reference_name: str,
) -> tuple[onnx.ModelProto, str, Fidelity]:
    """The first exporter whose graph runs every check set and matches PyTorch, else the closest (or an error)."""
    failures: list[str] = []
    best: tuple[onnx.ModelProto, str, Fidelity] | None = None
    for attempt in attempts:
        try:
            proto = _export(model, example, inputs, output_names, attempt)
        except Exception as exc:
            failures.append(f"{attempt}: {type(exc).__name__}: {_first_line(exc)}")
            continue
        try:
            converted = [run_onnx_reference(proto, feeds) for feeds in check_sets]
        except Exception as exc:  # a graph that froze a dynamic size cannot run other sizes: try the next exporter
            failures.append(f"{attempt}: the exported graph fails on other batch or sequence sizes than the "
                            f"export example's ({_first_line(exc)})")
            continue
        fidelity = combine([
            compare_outputs(ref, got, reference_name=reference_name, runtime_name="onnxruntime cpu fp32",
                            tolerance=tolerance)
            for ref, got in zip(references, converted, strict=True)
        ])
        if fidelity.passed:
            return proto, attempt, fidelity
        failures.append(f"{attempt}: max abs diff {fidelity.max_abs_diff:.3g} (tolerance {tolerance:g}), "
                        f"top-1 agreement {fidelity.top1_agreement}")
        if best is None or fidelity.max_abs_diff < best[2].max_abs_diff:
            best = (proto, attempt, fidelity)
    if best is None:
        raise ConversionError("torch.onnx.export failed with every exporter tried:\n  " + "\n  ".join(failures))
    if not allow_fidelity_loss:
        raise FidelityError(
            "the converted model differs from PyTorch:\n  " + "\n  ".join(failures)
            + "\ntry exporter='torchscript' or 'dynamo', or pass allow_fidelity_loss=True to keep it anyway"
        )
    return best


def _export(
    model: Any, example: tuple[Any, ...], inputs: list[TensorType | ImageType], output_names: list[str], exporter: str
) -> onnx.ModelProto:
    import torch

    input_names = [spec.name for spec in inputs]
    dynamic_axes: dict[str, dict[int, str]] = {
        spec.name: {axis: "batch" if axis == 0 else f"{spec.name}_{axis}" for axis, size in enumerate(spec.shape)
                    if axis == 0 or size == -1}
        for spec in inputs
    }
    dynamic_axes.update({name: {0: "batch"} for name in output_names})
    with _quiet_export():
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, example, dynamo=True, input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=_OPSET, verbose=False,
            )
            assert program is not None
            return _unclash_outputs(program.model_proto)
        buffer = io.BytesIO()
        torch.onnx.export(
            model, example, buffer, dynamo=False,  # type: ignore[arg-type]
            input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=17,
        )
    return onnx.load_from_string(buffer.getvalue())


def _unclash_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rename inner values that share a graph output's name.

    The dynamo exporter renames outputs to the requested names without checking
    that an inner value already has that name (an `nn.Embedding` yields a value
    called "embedding"), which makes a graph ONNX Runtime refuses to load. Graph
    outputs are produced by the last node that writes them, so earlier writers
    and their readers are renamed.
    """
    graph = proto.graph
    outputs = {output.name for output in graph.output}
    writers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name in outputs:
                writers.setdefault(name, []).append(index)
    clashing = {name: indices for name, indices in writers.items() if len(indices) > 1}
    renamed: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
        for position, name in enumerate(node.output):
            if name not in clashing:
                continue
            if index == clashing[name][-1]:
                renamed.pop(name, None)
            else:
                renamed[name] = node.output[position] = f"{name}__inner{index}"
    for info in graph.value_info:  # shape records under a clashing name describe the inner value, not the output
        if info.name in clashing:
            info.name = f"{info.name}__inner{clashing[info.name][0]}"
    return proto


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
    tensors = [tensor for spec in inputs for tensor in (spec.tensors if isinstance(spec, TextType) else (spec,))]
    if sample_inputs:
        try:
            return {spec.name: np.stack([np.asarray(s[spec.name]) for s in sample_inputs]) for spec in tensors}
        except KeyError as exc:
            raise ConversionError(f"sample_inputs lack input {exc}; give a value for every graph input") from exc
        except ValueError as exc:
            raise ConversionError(f"sample_inputs of different shapes cannot form one batch ({exc}); pad them alike") from exc
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in tensors:
        shape = tuple(4 if i == 0 else (d if d > 0 else 8) for i, d in enumerate(spec.shape))
        if isinstance(spec, ImageType) or spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype if spec.dtype != "bfloat16" else "float32")
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
    for text in (spec for spec in inputs if isinstance(spec, TextType)):
        # Token ids stay random; a mask of ones and token types of zeros are what a tokenizer gives unpadded text.
        if text.attention_mask:
            feeds[text.attention_mask] = np.ones_like(feeds[text.attention_mask])
        if text.token_type_ids:
            feeds[text.token_type_ids] = np.zeros_like(feeds[text.token_type_ids])
    return feeds


def _check_sets(tensors: Sequence[TensorType | ImageType], samples: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The samples, plus their first row cut to about 3/4 along every dynamic non-batch axis.

    The second set has other sizes than the export example on every dynamic axis,
    so a graph that froze a size fails here instead of on a user's request.
    """
    shorter = {}
    for spec in tensors:
        value = samples[spec.name][:1]
        for axis, size in enumerate(spec.shape):
            if axis > 0 and size == -1 and value.shape[axis] > 1:
                value = np.take(value, np.arange(value.shape[axis] - max(1, value.shape[axis] // 4)), axis=axis)
        shorter[spec.name] = np.ascontiguousarray(value)
    return [samples, shorter]


def _export_rows(sample: np.ndarray) -> np.ndarray:
    """The first rows of a sample batch as the export example, repeated when there are too few."""
    rows = sample[:_EXPORT_ROWS]
    return np.ascontiguousarray(np.resize(rows, (_EXPORT_ROWS, *rows.shape[1:])) if len(rows) < _EXPORT_ROWS else rows)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


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


def _graph_shape(proto: onnx.ModelProto, name: str, example: tuple[int, ...]) -> tuple[int, ...]:
    """An output's shape as the graph declares it: -1 where the graph keeps a dimension symbolic (batch, sequence)."""
    output = next((o for o in proto.graph.output if o.name == name), None)
    dims = output.type.tensor_type.shape.dim if output is not None else []
    if len(dims) != len(example):
        return (-1, *example[1:])
    return tuple(-1 if axis == 0 or not dim.HasField("dim_value") else int(dim.dim_value)
                 for axis, dim in enumerate(dims))


def _dtype_name(dtype: np.dtype) -> Any:
    return np.dtype(dtype).name
