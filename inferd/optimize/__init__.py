"""Model compression: each function takes a ModelPackage and returns a new, smaller one.

Every step is recorded in the manifest (parameters, sizes, layers kept at full
precision), and compressed weights are decoded by standard ONNX ops inside the
graph, so a compressed package loads on every backend like any other.
"""

from __future__ import annotations

from inferd.optimize.errors import AccuracyBudgetError, OptimizeError
from inferd.optimize.evalset import EvalSet, build_eval_set
from inferd.optimize.evaluate import Reference, predict
from inferd.optimize.floor import FLOOR, Floor, shortfalls
from inferd.optimize.fp16 import to_fp16
from inferd.optimize.guard import guarded
from inferd.optimize.int8 import quantize_static, quantize_weights
from inferd.optimize.metrics import OutputFidelity, fidelity
from inferd.optimize.palettize import palettize
from inferd.optimize.photos import augmented_photos
from inferd.optimize.pipeline import compress, compress_each, parse
from inferd.optimize.progress import reporting
from inferd.optimize.prune import prune

__all__ = [
    "FLOOR",
    "AccuracyBudgetError",
    "EvalSet",
    "Floor",
    "OptimizeError",
    "OutputFidelity",
    "Reference",
    "augmented_photos",
    "build_eval_set",
    "compress",
    "compress_each",
    "fidelity",
    "guarded",
    "palettize",
    "parse",
    "predict",
    "prune",
    "quantize_static",
    "quantize_weights",
    "reporting",
    "shortfalls",
    "to_fp16",
]
