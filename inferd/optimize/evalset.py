"""Evaluation sets: what fidelity, accuracy and the accuracy guard are measured on.

A labelled folder (one sub-folder per class) gives accuracy; without one,
crops, flips and colour jitter of real photographs give enough varied natural
images to measure agreement with the uncompressed model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferd.manifest import Manifest
from inferd.optimize.calibration import image_paths, single_image_input
from inferd.optimize.errors import OptimizeError
from inferd.types import ImageType


@dataclass
class EvalSet:
    """Inputs stacked along the batch axis, with class indices when known."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, count: int) -> EvalSet:
        labels = None if self.labels is None else self.labels[:count]
        return EvalSet({k: v[:count] for k, v in self.inputs.items()}, labels)


def build_eval_set(manifest: Manifest, source: str | os.PathLike[str] | None = None, count: int = 500) -> EvalSet:
    """From a labelled image folder, an .npz (input arrays plus optional `labels`), or augmented sample photos."""
    if source is None:
        spec = single_image_input(manifest, hint="pass evaluation data as an .npz keyed by input name")
        return EvalSet({spec.name: np.stack(augmented_photos(spec, count))})
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            missing = [s.name for s in manifest.inputs if s.name not in data]
            if missing:
                raise OptimizeError(f"{path} has no arrays named {missing}; key the arrays by the model's input names")
            inputs = {s.name: data[s.name].astype(np.float32) for s in manifest.inputs}
            labels = data["labels"].astype(np.int64) if "labels" in data else None
        return EvalSet(inputs, labels)
    if path.is_dir():
        return labelled_folder(manifest, path)
    raise OptimizeError(f"evaluation data {path} is neither a labelled image folder nor an .npz file")


def labelled_folder(manifest: Manifest, folder: Path) -> EvalSet:
    """Sub-folder names are class labels (as in the manifest) or class indices."""
    from inferd.io import preprocess_image

    spec = single_image_input(manifest, hint="pass evaluation data as an .npz keyed by input name")
    labels = manifest.classifier.labels if manifest.classifier else []
    tensors, targets = [], []
    for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
        if directory.name in labels:
            target = labels.index(directory.name)
        elif directory.name.isdigit():
            target = int(directory.name)
        else:
            raise OptimizeError(f"{directory.name!r} in {folder} is neither a class label of the model nor an index")
        for image in image_paths(directory):
            tensors.append(preprocess_image(image, spec))
            targets.append(target)
    if not tensors:
        raise OptimizeError(f"{folder} holds no images in per-class sub-folders (e.g. {folder}/tabby/1.jpg)")
    return EvalSet({spec.name: np.stack(tensors)}, np.asarray(targets, dtype=np.int64))


def augmented_photos(spec: ImageType, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` tensors from random crops, flips and colour jitter of scikit-image's photographs."""
    from PIL import Image, ImageEnhance

    from inferd.io import to_tensor
    from inferd.zoo.efficientnet_lite0 import sample_photos

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in sample_photos()]
    tensors = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        image = photo.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        tensors.append(to_tensor(image, spec))
    return tensors
