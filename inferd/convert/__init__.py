"""Converters: one module per source framework, each returning a fidelity-checked ModelPackage.

TensorFlow, scikit-learn and PyTorch are imported only when a model of theirs is
converted, so `import inferd` stays light and works without those extras.
"""

from inferd.convert.assemble import served_name
from inferd.convert.auto import ConvertOptions, convert, convert_any
from inferd.convert.detect import SourceKind, detect_source
from inferd.convert.inputs import ImagePreprocessing
from inferd.convert.onnx import convert_onnx
from inferd.convert.pytorch import convert_pytorch
from inferd.convert.sklearn import convert_sklearn
from inferd.convert.tensorflow import convert_tensorflow
from inferd.convert.torchscript import convert_torchscript

__all__ = [
    "ConvertOptions", "ImagePreprocessing", "SourceKind", "convert", "convert_any", "convert_onnx",
    "convert_pytorch", "convert_sklearn", "convert_tensorflow", "convert_torchscript", "detect_source", "served_name",
]
