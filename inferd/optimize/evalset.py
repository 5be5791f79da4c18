"""Evaluation sets: what fidelity, accuracy, the accuracy guard and the floor are measured on.

A labelled folder (one sub-folder per class) gives accuracy; without one,
crops, flips and colour jitter of real photographs give enough varied natural
images to measure agreement with the uncompressed model. Samples are made a
batch at a time and kept only when the whole set is small: 500 inputs of a
736x736 detector are 3 GB, which is what killed `optimize --report` on one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from inferd.manifest import Manifest
from inferd.optimize.calibration import Feeds, image_paths, single_image_input
from inferd.optimize.errors import OptimizeError
from inferd.optimize.photos import AugmentedPhotos
from inferd.types import ImageType

REPORT_SAMPLES = 500  # the report's default set, for a 224x224 input (see `scaled_count`)
FLOOR_SAMPLES = 32  # enough to tell a destroyed model from a usable one, at a fraction of the report's cost
MIN_SAMPLES = 16
_REFERENCE_PIXELS = 224 * 224
# Generated samples are kept between passes (the guard makes hundreds) while the whole set fits in this;
# a larger set is made again on every pass, which costs less than running the model on it.
_KEEP_BYTES = 512 << 20

Sample = Callable[[int], Feeds]  # the inputs of sample `index`, without a batch dimension


class EvalSet:
    """Inputs, with class indices when known, handed out a batch at a time.

    Built from arrays already in memory (`EvalSet({"x": array}, labels)`), or
    from a function that makes sample `index` on demand (`EvalSet.generated`).
    """

    def __init__(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None, description: str = "",
                 *, synthetic: bool = False) -> None:
        counts = {len(array) for array in inputs.values()}
        if len(counts) != 1:
            raise OptimizeError(f"evaluation inputs {sorted(inputs)} have different numbers of samples {sorted(counts)}")
        self._arrays: dict[str, np.ndarray] | None = dict(inputs)
        self._sample: Sample | None = None
        self._kept: dict[int, Feeds] | None = None
        self._count = counts.pop()
        self.labels = labels
        self.description = description or f"{self._count} samples"
        self.synthetic = synthetic  # made up, not data: a model may not even run on it

    @classmethod
    def generated(cls, count: int, sample: Sample, labels: np.ndarray | None = None, description: str = "") -> EvalSet:
        """`count` samples made by `sample(index)` when a batch needs them."""
        result = cls.__new__(cls)
        result._arrays, result._sample, result._kept, result._count = None, sample, None, count
        result.labels, result.description = labels, description or f"{count} samples"
        result.synthetic = False
        return result

    def __len__(self) -> int:
        return self._count

    def batch(self, start: int, stop: int) -> Feeds:
        """Samples `start` to `stop`, stacked along a new leading (batch) axis."""
        if self._arrays is not None:
            return {name: array[start:stop] for name, array in self._arrays.items()}
        samples = [self._one(index) for index in range(start, min(stop, self._count))]
        return {name: np.stack([s[name] for s in samples]) for name in samples[0]}

    def batches(self, size: int) -> Iterator[tuple[Feeds, np.ndarray | None]]:
        """The whole set in order, `size` samples at a time, with their labels."""
        for start in range(0, self._count, size):
            stop = min(start + size, self._count)
            yield self.batch(start, stop), None if self.labels is None else self.labels[start:stop]

    def sample_bytes(self) -> int:
        """Bytes of one sample's inputs, what batch sizes are chosen by."""
        return sum(array.nbytes for array in self.batch(0, 1).values())

    def subset(self, count: int) -> EvalSet:
        count = min(count, self._count)
        labels = None if self.labels is None else self.labels[:count]
        if self._arrays is not None:
            return EvalSet({k: v[:count] for k, v in self._arrays.items()}, labels, f"{count} of {self.description}")
        return EvalSet.generated(count, self._one, labels, f"{count} of {self.description}")

    def _one(self, index: int) -> Feeds:
        assert self._sample is not None
        if self._kept is not None and index in self._kept:
            return self._kept[index]
        sample = self._sample(index)
        if self._kept is None and sum(a.nbytes for a in sample.values()) * self._count <= _KEEP_BYTES:
            self._kept = {}
        if self._kept is not None:
            self._kept[index] = sample
        return sample


def scaled_count(manifest: Manifest, count: int) -> int:
    """`count` samples for a 224x224 input, fewer for larger ones (at least MIN_SAMPLES): the evaluation then
    sees about the same number of pixels and costs about the same time whatever the input size."""
    images = [spec for spec in manifest.inputs if isinstance(spec, ImageType)]
    if not images:
        return count
    pixels = images[0].height * images[0].width
    return max(min(count, MIN_SAMPLES), min(count, round(count * _REFERENCE_PIXELS / pixels)))


def build_eval_set(
    manifest: Manifest, source: str | os.PathLike[str] | None = None, count: int = REPORT_SAMPLES
) -> EvalSet:
    """From a labelled image folder, an .npz (input arrays plus optional `labels`), or `count` augmented sample
    photos."""
    if source is None:
        spec = single_image_input(manifest, hint="pass evaluation data as an .npz keyed by input name")
        photos = AugmentedPhotos(spec)
        return EvalSet.generated(count, lambda i: {spec.name: photos(i)}, description=f"{count} augmented sample photos")
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            missing = [s.name for s in manifest.inputs if s.name not in data]
            if missing:
                raise OptimizeError(f"{path} has no arrays named {missing}; key the arrays by the model's input names")
            inputs = {s.name: data[s.name].astype(np.float32) for s in manifest.inputs}
            labels = data["labels"].astype(np.int64) if "labels" in data else None
        return EvalSet(inputs, labels, f"{path.name} ({len(next(iter(inputs.values())))} samples)")
    if path.is_dir():
        return labelled_folder(manifest, path)
    raise OptimizeError(f"evaluation data {path} is neither a labelled image folder nor an .npz file")


def default_eval_set(
    manifest: Manifest, source: str | os.PathLike[str] | None, samples: int | None, *, thorough: bool
) -> EvalSet:
    """What `inferd optimize` measures on: the user's data; else sample photos for an image model, as many as
    `samples` or, by default, the report's REPORT_SAMPLES when `thorough` (a report or a guard) and the floor's
    FLOOR_SAMPLES otherwise, scaled to the input size; else, for the floor alone, synthetic inputs."""
    if source is not None:
        return build_eval_set(manifest, source)
    count = samples or scaled_count(manifest, REPORT_SAMPLES if thorough else FLOOR_SAMPLES)
    try:
        return build_eval_set(manifest, None, count)
    except OptimizeError:
        if thorough:
            raise
    return synthetic_eval_set(manifest, count)


def synthetic_eval_set(manifest: Manifest, count: int) -> EvalSet:
    """The converter's synthetic inputs (pixels pushed through the preprocessing, standard normal tensors): what a
    model without images or data of its own can be checked on at all."""
    from inferd.convert.samples import sample_feeds

    return EvalSet(sample_feeds(manifest.graph_inputs, batch=count), description=f"{count} synthetic inputs",
                   synthetic=True)


def labelled_folder(manifest: Manifest, folder: Path) -> EvalSet:
    """Sub-folder names are class labels (as in the manifest) or class indices."""
    from inferd.io import preprocess_image

    spec = single_image_input(manifest, hint="pass evaluation data as an .npz keyed by input name")
    labels = manifest.classifier.labels if manifest.classifier else []
    paths, targets = [], []
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        if directory.name in labels:
            target = labels.index(directory.name)
        elif directory.name.isdigit():
            target = int(directory.name)
        else:
            raise OptimizeError(f"{directory.name!r} in {folder} is neither a class label of the model nor an index")
        for image in image_paths(directory):
            paths.append(image)
            targets.append(target)
    if not paths:
        raise OptimizeError(f"{folder} holds no images in per-class sub-folders (e.g. {folder}/tabby/1.jpg)")
    return EvalSet.generated(len(paths), lambda i: {spec.name: preprocess_image(paths[i], spec)},
                             np.asarray(targets, dtype=np.int64), f"{folder} ({len(paths)} labelled images)")
