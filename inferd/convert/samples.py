"""Sample inputs for fidelity checks: the user's, stacked into one batch, or reproducible synthetic ones.

Synthetic images are drawn as pixels in 0..255 and pushed through the input's own
scale and bias, so the converted model is compared where real pictures put it,
not on standard-normal noise that no camera produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from inferd.convert.inputs import Spec
from inferd.errors import ConversionError
from inferd.io.images import to_tensor
from inferd.io.photos import photos_available, sample_photos
from inferd.types import ImageType

SYNTHETIC_BATCH = 4
_DYNAMIC_STAND_IN = 8  # the size given to a dynamic non-batch dimension (a sequence length, say)


def sample_feeds(
    inputs: Sequence[Spec],
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    batch: int = SYNTHETIC_BATCH,
) -> dict[str, np.ndarray]:
    """Stack user samples (one dict per sample, no batch dimension) into one batch, or draw `batch` synthetic ones."""
    if sample_inputs:
        try:
            return {
                spec.name: np.stack([np.asarray(s[spec.name]) for s in sample_inputs]).astype(_numpy_dtype(spec), copy=False)
                for spec in inputs
            }
        except KeyError as exc:
            raise ConversionError(f"sample_inputs lack input {exc}; give a value for every input") from exc
        except ValueError as exc:
            raise ConversionError(f"sample_inputs do not stack into one batch ({exc}); give every sample the same shape") from exc
    rng = np.random.default_rng(0)
    return {spec.name: _synthetic(spec, batch, rng) for spec in inputs}


def _synthetic(spec: Spec, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(batch if i == 0 else (d if d > 0 else _DYNAMIC_STAND_IN) for i, d in enumerate(spec.shape))
    if isinstance(spec, ImageType):
        channel_axis = 1 if spec.channel_layout == "NCHW" else 3
        per_channel = [1] * 4
        per_channel[channel_axis] = -1
        scale = np.asarray(spec.scale, dtype=np.float32).reshape(-1)
        bias = np.asarray(spec.bias, dtype=np.float32).reshape(-1)
        pixels = rng.integers(0, 256, shape).astype(np.float32)
        return (pixels * scale.reshape(per_channel if scale.size > 1 else ()) +
                bias.reshape(per_channel if bias.size > 1 else ())).astype(np.float32)
    dtype = _numpy_dtype(spec)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    raise ConversionError(
        f"cannot make synthetic samples for input {spec.name!r} of type {spec.dtype}; pass sample_inputs"
    )


def _numpy_dtype(spec: Spec) -> np.dtype:
    if spec.dtype == "bfloat16":
        return np.dtype(np.float32)
    if spec.dtype == "string":
        return np.dtype(object)
    return np.dtype(spec.dtype)


STORED_SAMPLES = 4
STORED_BYTES = 8 << 20  # what one input's stored samples may take in a package; a 736x736 image holds one


def representative_samples(
    inputs: Sequence[Spec], sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None
) -> dict[str, np.ndarray] | None:
    """What a package keeps as its own typical inputs (`samples.npz`), to measure reduced precisions on later.

    The user's samples when given; for a model whose inputs are all images, real
    photographs preprocessed as each input says. Anything else has no typical
    input to offer: random tokens or bytes are not evidence that a precision keeps
    a model's answers (a file-type classifier passed on random bytes and moved a
    probability by 0.1 on a real file), so there are none (None). Large inputs
    keep fewer rows so the samples stay a small part of the package.
    """
    if sample_inputs:
        feeds = sample_feeds(inputs, sample_inputs)
    elif all(isinstance(spec, ImageType) for spec in inputs) and photos_available():
        photos = [Image.fromarray(photo) for photo in sample_photos()]
        feeds = {spec.name: np.stack([to_tensor(photo, spec) for photo in photos]) for spec in inputs
                 if isinstance(spec, ImageType)}
    else:
        return None
    return _trimmed(feeds)


def load_samples_file(path: Path, inputs: Sequence[Spec]) -> dict[str, np.ndarray]:
    """Typical inputs from an .npz keyed by graph input name, each batch first, checked against the inputs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read samples from {path} ({exc}); give an .npz written by numpy.savez") from None
    names = [spec.name for spec in inputs]
    if sorted(arrays) != sorted(names):
        raise ConversionError(f"{path} holds arrays {sorted(arrays)}; the model's inputs are {names}: key one array "
                              "per input by its name, rows along the first axis")
    samples = {}
    for spec in inputs:
        value = arrays[spec.name]
        fixed = spec.shape[1:]
        if value.ndim != len(spec.shape) or any(want not in (-1, got) for want, got in zip(fixed, value.shape[1:], strict=True)):
            raise ConversionError(f"samples for {spec.name!r} have shape {list(value.shape)}; the input takes "
                                  f"{list(spec.shape)} (-1: any size), rows first")
        if not np.can_cast(value.dtype, _numpy_dtype(spec), casting="same_kind"):
            raise ConversionError(f"samples for {spec.name!r} are {value.dtype}; the input takes {spec.dtype}")
        samples[spec.name] = value.astype(_numpy_dtype(spec), copy=False)
    if len({len(value) for value in samples.values()}) > 1:
        raise ConversionError(f"the arrays in {path} have different numbers of rows; give every input the same")
    return _trimmed(samples)


def _trimmed(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """At most STORED_SAMPLES rows, fewer for large inputs, so the samples stay a small part of the package."""
    rows = min(len(value) for value in feeds.values())
    largest_row = max(value[:1].nbytes for value in feeds.values())
    keep = max(1, min(rows, STORED_SAMPLES, STORED_BYTES // max(largest_row, 1)))
    return {name: np.ascontiguousarray(value[:keep]) for name, value in feeds.items()}
