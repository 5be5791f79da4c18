"""TensorFlow → ModelPackage: SavedModel directories, Keras `.keras`/`.h5` files and models, `.tflite` files.

All go through tf2onnx, then the same graph preparation as an ONNX file. Fidelity
is measured against the source's own runtime on the same inputs: TensorFlow
executing the SavedModel signature or the Keras model, the LiteRT interpreter for
`.tflite`. Image inputs stay NHWC, as TensorFlow trained them, and the package's
ImageType says so, which is what lays a picture out right at prediction time.

TensorFlow is an optional extra (`pip install inferd[tensorflow]`): it is imported
only when a TensorFlow source is converted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from inferd.convert.assemble import classifier_for, make_package, output_specs, require_fidelity
from inferd.convert.extras import require
from inferd.convert.fidelity import compare_outputs
from inferd.convert.inputs import ImagePreprocessing, Spec
from inferd.convert.prepare import Progress, no_progress, prepare_graph, rename_values
from inferd.convert.reference import Runner, run_in_batches, run_onnx
from inferd.convert.samples import sample_feeds
from inferd.errors import ConversionError
from inferd.manifest import Source
from inferd.package import ModelPackage

TensorFlowKind = Literal["saved_model", "keras", "tflite"]
DEFAULT_OPSET = 17  # tf2onnx 1.17 writes opsets up to 18; 17 is its best-tested one that every backend here reads


@dataclass
class _Converted:
    """A tf2onnx result plus a way to run the source on the same inputs (ONNX input name -> array)."""

    model: onnx.ModelProto
    run_source: Runner
    one_at_a_time: bool
    reference: str
    source: Source
    default_name: str


def convert_tensorflow(
    model: str | os.PathLike[str] | Any,
    *,
    signature: str = "serving_default",
    inputs: Sequence[Spec] | None = None,
    image: ImagePreprocessing | None = None,
    input_shape: Sequence[int] | None = None,
    classifier_labels: Sequence[str] | None = None,
    classifier_output: str | None = None,
    activation: str | None = None,
    metadata: Mapping[str, str] | None = None,
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    opset: int | None = None,
    simplify: bool = True,
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
    progress: Progress = no_progress,
) -> ModelPackage:
    """Convert a SavedModel directory, a `.keras`/`.h5`/`.tflite` file or an in-memory Keras model.

    `input_shape` fixes the dimensions a model leaves open (an image's height and
    width, typically); the other options are those of `convert_onnx`.
    """
    _quiet_tensorflow_logs()
    progress("loading TensorFlow")
    kind = tensorflow_kind(model)
    opset = opset or DEFAULT_OPSET
    with _quiet():
        if kind == "tflite":
            converted = _from_tflite(Path(model), opset, progress)
        elif kind == "saved_model":
            converted = _from_saved_model(Path(model), signature, input_shape, opset, progress)
        else:
            converted = _from_keras(model, input_shape, opset, progress)
    prepared = prepare_graph(
        converted.model, framework="tensorflow", inputs=inputs, image=image, input_shape=input_shape,
        default_layout="NHWC", opset=None, simplify=simplify, progress=progress,
    )
    progress(f"measuring fidelity against {converted.reference}")
    samples = sample_feeds(prepared.inputs, sample_inputs)
    with _quiet():
        reference = run_in_batches(converted.run_source, samples, one_at_a_time=converted.one_at_a_time)
    candidate = run_onnx(prepared.model, samples)
    fidelity = compare_outputs(reference, candidate, reference_name=converted.reference,
                               runtime_name="onnxruntime cpu fp32", tolerance=tolerance)
    require_fidelity(fidelity, allow_fidelity_loss=allow_fidelity_loss, source=converted.reference,
                     hint="try simplify=False (--no-simplify) or another opset (--opset)")
    outputs = output_specs(prepared.model, candidate, batch_dynamic=prepared.batch_dynamic)
    return make_package(
        prepared.model,
        inputs=prepared.inputs,
        outputs=outputs,
        classifier=classifier_for(prepared.model, outputs, classifier_labels, output=classifier_output,
                                  activation=activation, sample_outputs=candidate),
        metadata=metadata,
        default_name=converted.default_name,
        source=converted.source,
        fidelity=fidelity,
    )


def tensorflow_kind(model: str | os.PathLike[str] | Any) -> TensorFlowKind:
    if not isinstance(model, (str, os.PathLike)):
        if type(model).__module__.startswith(("keras", "tf_keras", "tensorflow")) and hasattr(model, "inputs"):
            return "keras"
        raise ConversionError(f"expected a Keras model or a TensorFlow file, got {type(model).__name__}")
    path = Path(model)
    if path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        return "saved_model"
    if path.suffix.lower() == ".tflite" and path.is_file():
        return "tflite"
    if path.suffix.lower() in (".keras", ".h5", ".hdf5") and path.is_file():
        return "keras"
    raise ConversionError(
        f"{path} is not a TensorFlow model inferd reads: give a SavedModel directory (with saved_model.pb), "
        "a .keras, .h5 or .tflite file"
    )


# -- Keras ------------------------------------------------------------------------------------------


def _from_keras(model: Any, input_shape: Sequence[int] | None, opset: int, progress: Progress) -> _Converted:
    tf = _tensorflow()
    keras = require("keras", "tensorflow")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        progress(f"loading {path.name} with Keras {keras.__version__}")
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises ValueError, OSError, TypeError... for files it cannot rebuild
            raise ConversionError(
                f"Keras {keras.__version__} cannot load {path}: {_first_line(exc)}; a file written by "
                "model.save_weights() holds no architecture, and custom layers must be importable"
            ) from None
        name = path.stem
    else:
        name = model.name
    try:
        keras_inputs = list(model.inputs)
    except AttributeError:
        raise ConversionError("the Keras model has no defined inputs; give it a keras.Input or call it once "
                              "before saving") from None
    output_names = _output_names(model)
    specs = [
        tf.TensorSpec(_override(tuple(t.shape), input_shape, len(keras_inputs)), t.dtype, name=t.name)
        for t in keras_inputs
    ]

    @tf.function
    def serve(*args: Any) -> dict[str, Any]:
        outputs = model(list(args) if len(args) > 1 else args[0], training=False)
        return dict(zip(output_names, tf.nest.flatten(outputs), strict=True))

    proto = _tf2onnx(lambda tf2onnx: tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset), progress)
    input_names = [spec.name for spec in specs]
    return _Converted(
        model=proto,
        run_source=_function_runner(serve, input_names, [o.name for o in proto.graph.output]),
        one_at_a_time=False,
        reference=f"keras {keras.__version__} on tensorflow {tf.__version__}",
        source=Source(framework=f"keras (via tf2onnx {version('tf2onnx')})", framework_version=keras.__version__),
        default_name=name,
    )


def _output_names(model: Any) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    count = len(model.outputs)
    if len(names) != count or len(set(names)) != count:
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return names


# -- SavedModel -------------------------------------------------------------------------------------


def _from_saved_model(
    path: Path, signature: str, input_shape: Sequence[int] | None, opset: int, progress: Progress
) -> _Converted:
    tf = _tensorflow()
    progress(f"loading the SavedModel with TensorFlow {tf.__version__}")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises OSError, ValueError and its own errors for unreadable directories
        raise ConversionError(f"TensorFlow cannot load the SavedModel {path}: {_first_line(exc)}") from None
    signatures = dict(loaded.signatures)
    if signature not in signatures:
        raise ConversionError(
            f"the SavedModel {path} has no signature {signature!r}; it has {sorted(signatures) or 'none'} "
            "(save it with tf.saved_model.save(..., signatures=...) or model.export(...))"
        )
    function = signatures[signature]
    keyword_specs: dict[str, Any] = function.structured_input_signature[1]
    names = sorted(keyword_specs)
    specs = [
        tf.TensorSpec(_override(tuple(keyword_specs[n].shape), input_shape, len(names)), keyword_specs[n].dtype, name=n)
        for n in names
    ]

    @tf.function
    def serve(*args: Any) -> Any:
        return function(**dict(zip(names, args, strict=True)))

    serve.loaded = loaded  # the signature's variables live as long as the object it was loaded into
    proto = _tf2onnx(lambda tf2onnx: tf2onnx.convert.from_function(serve, input_signature=specs, opset=opset), progress)
    return _Converted(
        model=proto,
        run_source=_function_runner(serve, names, [o.name for o in proto.graph.output]),
        one_at_a_time=False,
        reference=f"tensorflow {tf.__version__} SavedModel signature {signature!r}",
        source=Source(framework=f"tensorflow SavedModel (via tf2onnx {version('tf2onnx')})",
                      framework_version=tf.__version__),
        default_name=path.resolve().name,
    )


def _function_runner(function: Any, input_names: list[str], output_names: list[str]) -> Runner:
    tf = _tensorflow()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = function(*(tf.constant(feeds[name]) for name in input_names))
        return [np.asarray(result[name]) for name in output_names]

    return run


# -- TFLite -----------------------------------------------------------------------------------------


def _from_tflite(path: Path, opset: int, progress: Progress) -> _Converted:
    tf = _tensorflow()
    litert = require("ai_edge_litert.interpreter", "tensorflow")

    def interpreter_for(file: Path) -> Any:
        # The built-in kernels without the XNNPACK delegate: the plain fp32 reference (and no banner on stderr).
        return litert.Interpreter(model_path=str(file),
                                  experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    with path.open("rb") as file:
        if file.read(8)[4:8] != b"TFL3":
            raise ConversionError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier); check the file")
    # Signature names ("image") are what the user and the package should see, not tensor names
    # ("serving_default_image:0").
    names = _tflite_signature_names(interpreter_for(path))
    proto = _tf2onnx(lambda tf2onnx: tf2onnx.convert.from_tflite(str(path), opset=opset), progress)
    rename_values(proto, {old: names.get(old, _strip_port(old)) for old in
                          [i.name for i in proto.graph.input] + [o.name for o in proto.graph.output]})
    interpreter = interpreter_for(path)
    details = {names.get(d["name"], _strip_port(d["name"])): d for d in interpreter.get_input_details()}
    output_index = {names.get(d["name"], _strip_port(d["name"])): d["index"] for d in interpreter.get_output_details()}
    batch_fixed = any(d["shape_signature"][0] != -1 for d in details.values() if len(d["shape_signature"]))
    allocated: dict[str, tuple[int, ...]] = {}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        shapes = {name: tuple(np.shape(value)) for name, value in feeds.items()}
        if shapes != allocated:
            for name, shape in shapes.items():
                interpreter.resize_tensor_input(details[name]["index"], list(shape))
            interpreter.allocate_tensors()
            allocated.clear()
            allocated.update(shapes)
        for name, value in feeds.items():
            interpreter.set_tensor(details[name]["index"], np.ascontiguousarray(value, dtype=details[name]["dtype"]))
        interpreter.invoke()
        return [interpreter.get_tensor(output_index[o.name]).copy() for o in proto.graph.output]

    return _Converted(
        model=proto,
        run_source=run,
        one_at_a_time=batch_fixed,
        reference=f"LiteRT interpreter (ai-edge-litert {version('ai-edge-litert')})",
        source=Source(framework=f"tflite (via tf2onnx {version('tf2onnx')})", framework_version=tf.__version__),
        default_name=path.stem,
    )


def _tflite_signature_names(interpreter: Any) -> dict[str, str]:
    """Tensor name -> signature name, for the (single) signature; empty for files without signatures."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    mapping = {details["name"]: key for key, details in runner.get_input_details().items()}
    mapping.update({details["name"]: key for key, details in runner.get_output_details().items()})
    return mapping


def _strip_port(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


# -- shared -----------------------------------------------------------------------------------------


def _tf2onnx(convert: Callable[[Any], tuple[onnx.ModelProto, Any]], progress: Progress) -> onnx.ModelProto:
    """Run a tf2onnx entry point; unsupported ops do not raise there, the graph scan in prepare_graph names them."""
    tf2onnx = require("tf2onnx", "tensorflow")
    progress(f"converting with tf2onnx {version('tf2onnx')}")
    try:
        proto, _ = convert(tf2onnx)
    except Exception as exc:  # tf2onnx raises ValueError, KeyError, NotImplementedError... on graphs it cannot map
        raise ConversionError(f"tf2onnx {version('tf2onnx')} could not convert the model: {_first_line(exc)}; "
                              "try another opset (--opset 13..18)") from None
    return proto


def _override(shape: tuple[Any, ...], input_shape: Sequence[int] | None, input_count: int) -> tuple[Any, ...]:
    """The TensorSpec shape with `input_shape` (batch excepted) filled in, so tf2onnx sees static sizes."""
    if input_shape is None or input_count != 1 or len(input_shape) != len(shape):
        return shape
    return (None, *(given if declared is None else declared for declared, given in zip(shape[1:], input_shape[1:],
                                                                                         strict=True)))


def _tensorflow() -> Any:
    _quiet_tensorflow_logs()
    return require("tensorflow", "tensorflow")


def _quiet_tensorflow_logs() -> None:
    """TensorFlow's C++ logging reads this once, at import; a user's own setting wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf2onnx and TensorFlow log every step and deprecation; converting is quiet unless it fails."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow", "absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
