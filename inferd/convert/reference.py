"""Run a model on a batch of samples, whatever batch size it was exported with.

Fidelity checks feed one batch of several samples; a source or graph whose batch
is fixed at 1 (common for TFLite files and ONNX files exported at batch 1) is run
sample by sample instead and its outputs stacked, so every model is compared on
the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

Runner = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


def run_onnx(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime on the CPU in fp32, the reference runtime (see inferd.convert.fidelity)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fixed = any(i.shape and i.shape[0] == 1 for i in session.get_inputs())
    return run_in_batches(lambda batch: session.run(None, batch), feeds, one_at_a_time=fixed)


def run_in_batches(run: Runner, feeds: Mapping[str, np.ndarray], *, one_at_a_time: bool) -> list[np.ndarray]:
    """Run the whole batch at once, or sample by sample for a model whose batch is fixed at 1, stacking the results."""
    if not one_at_a_time:
        return [np.asarray(out) for out in run(dict(feeds))]
    count = len(next(iter(feeds.values())))
    per_sample = [run({name: value[i : i + 1] for name, value in feeds.items()}) for i in range(count)]
    return [np.concatenate([np.asarray(outs[k]) for outs in per_sample]) for k in range(len(per_sample[0]))]
