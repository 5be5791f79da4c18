"""Fidelity of compressed models against their uncompressed parent, output by output.

Computed with onnxruntime on the CPU (the reference runtime), so a difference
belongs to the compression, not to a backend's reduced-precision shortcuts.
Latency, which needs the real backends, is measured in `inferd.bench.compression`.

The parent runs over the evaluation set once; its outputs are kept (in memory
while small, else in a temporary folder) and replayed batch by batch against
every candidate, so the accuracy guard's many trials cost one run each, and no
more than a batch of inputs and outputs is ever in memory.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from inferd.optimize.errors import OptimizeError
from inferd.optimize.evalset import EvalSet
from inferd.optimize.metrics import OutputFidelity, Ranges, Tally, role
from inferd.optimize.progress import task
from inferd.package import ModelPackage
from inferd.tolerance import THRESHOLD

_MAX_BATCH = 32
_BATCH_BYTES = 8 << 20  # inputs per batch: 13 samples of 224x224, 1 of 736x736, whose activations are 10x larger
_KEEP_BYTES = 256 << 20  # reference outputs kept in memory up to this; beyond, on disk
_RUN_ERRORS = (Fail, InvalidArgument, RuntimeException, ValueError)  # inputs the model cannot take


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def batch_size(runner: ort.InferenceSession, eval_set: EvalSet) -> int:
    """The model's own batch size when fixed, else as many samples as fit `_BATCH_BYTES` of inputs."""
    dim = runner.get_inputs()[0].shape[0]
    if isinstance(dim, int) and dim > 0:
        return dim
    return max(1, min(_MAX_BATCH, _BATCH_BYTES // max(1, eval_set.sample_bytes())))


def predict(model: onnx.ModelProto, eval_set: EvalSet) -> np.ndarray:
    """First output on the whole set, one row per sample: for classifiers' logits and other small outputs only."""
    runner = session(model)
    size = batch_size(runner, eval_set)
    outputs = [np.asarray(runner.run(None, feeds)[0]) for feeds, _ in eval_set.batches(size)]
    return np.concatenate(outputs).reshape(len(eval_set), -1)


class Reference:
    """The uncompressed package's outputs on an evaluation set, computed once, to judge candidates against."""

    def __init__(self, package: ModelPackage, eval_set: EvalSet, *, threshold: float = THRESHOLD,
                 description: str = "uncompressed") -> None:
        self.package, self.eval_set, self.threshold = package, eval_set, threshold
        runner = session(package.onnx_model)
        self.names = [output.name for output in runner.get_outputs()]
        self.batch = batch_size(runner, eval_set)
        self._kept = _Kept(-(-len(eval_set) // self.batch))
        ranges = {name: Ranges() for name in self.names}
        for outputs in _run(runner, eval_set, self.batch, f"evaluating {description}"):
            self._kept.add(outputs)
            for name, values in zip(self.names, outputs, strict=True):
                ranges[name].add(values)
        classifier = package.manifest.classifier.output if package.manifest.classifier else None
        self.roles = [role(name, ranges[name], classifier) for name in self.names]
        self._digest = _digest(package.onnx_model)
        self._known: dict[str, list[OutputFidelity]] = {}

    def compare(self, model: onnx.ModelProto, description: str = "candidate", *, quiet: bool = False) -> list[OutputFidelity]:
        """Every output of `model` against the reference's, with the metrics each output's role calls for."""
        digest = _digest(model)
        if digest not in self._known:
            tallies = [Tally(r, self.threshold) for r in self.roles]
            if digest == self._digest:  # the reference itself: nothing to run
                candidates: Iterator[list[np.ndarray]] = iter(self._kept)
            else:
                candidates = _run(session(model), self.eval_set, self.batch, None if quiet else f"evaluating {description}")
            labels = self.eval_set.batches(self.batch)
            for reference, candidate, (_, batch_labels) in zip(self._kept, candidates, labels, strict=True):
                for tally, ref, got in zip(tallies, reference, candidate, strict=True):
                    tally.add(ref, got, batch_labels)
            self._known[digest] = [t.result(labelled=self.eval_set.labels is not None) for t in tallies]
        return self._known[digest]


def _run(runner: ort.InferenceSession, eval_set: EvalSet, size: int, description: str | None) -> Iterator[list[np.ndarray]]:
    advance = task(description, len(eval_set)) if description else (lambda units: None)
    for feeds, _ in eval_set.batches(size):
        try:
            outputs = runner.run(None, feeds)
        except _RUN_ERRORS as exc:
            raise OptimizeError(f"the model does not run on the evaluation set ({eval_set.description}): {exc}") from None
        advance(len(next(iter(feeds.values()))))
        yield [np.asarray(output) for output in outputs]


def _digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


class _Kept:
    """Batches of reference outputs: in memory while all of them fit `_KEEP_BYTES`, else one file per batch."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.memory: list[list[np.ndarray]] = []
        self.folder: Path | None = None
        self.count = 0

    def add(self, outputs: list[np.ndarray]) -> None:
        if self.count == 0 and sum(o.nbytes for o in outputs) * self.batches > _KEEP_BYTES:
            self.folder = Path(tempfile.mkdtemp(prefix="inferd-reference-"))
            weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        if self.folder is None:
            self.memory.append(outputs)
        else:
            for index, output in enumerate(outputs):
                np.save(self.folder / f"{self.count}-{index}.npy", output, allow_pickle=False)
        self.count += 1

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        if self.folder is None:
            yield from self.memory
            return
        for batch in range(self.count):
            files = sorted(self.folder.glob(f"{batch}-*.npy"), key=lambda p: int(p.stem.split("-")[1]))
            yield [np.load(path, allow_pickle=False) for path in files]
