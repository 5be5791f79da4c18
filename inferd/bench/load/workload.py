"""The requests a load test sends, from the model's metadata or from the user's files.

Tensors come from the metadata (random values of each input's type, a dynamic dimension as 1) or from an .npz;
images from a folder (encoded files, sent as V2 BYTES or to /predict); texts from a file, one a line (as V2
BYTES or to /embed). Every body is prepared before the clock starts.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferd.bench.load.bodies import (
    Prepared,
    Tensors,
    image_upload,
    tensors_from_arrays,
    texts_for_embed,
    v2_binary,
    v2_json,
)
from inferd.bench.load.target import Target
from inferd.errors import InvalidInput
from inferd.serve.v2.types import DATATYPES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GENERATED_REQUESTS = 4
FORMATS = ("binary", "json")
ROUTES = ("v2", "rest")


@dataclass
class Workload:
    """What to send: HTTP bodies to one URL, or gRPC tensors; `describe` says which, for the report."""

    describe: str
    url: str = ""
    prepared: list[Prepared] = field(default_factory=list)
    tensors: list[Tensors] = field(default_factory=list)


def generated(target: Target, seed: int = 0) -> list[Tensors]:
    """A few requests of random values of each input's type and shape, a dynamic dimension taken as 1."""
    rng = np.random.default_rng(seed)
    requests = []
    for k in range(GENERATED_REQUESTS):
        tensors: Tensors = []
        for spec in target.inputs:
            shape = [1 if d < 0 else d for d in spec["shape"]]
            datatype = spec["datatype"]
            if datatype == "BYTES":
                array = np.full(shape, f"inferd load test {k}".encode(), dtype=object)
            elif datatype not in DATATYPES:
                raise InvalidInput(f"cannot generate input {spec['name']!r} of type {datatype}; give the inputs "
                                   "with --input FILE.npz")
            else:
                dtype = DATATYPES[datatype]
                if dtype.kind == "f":
                    array = rng.random(shape).astype(dtype)
                elif dtype.kind == "b":
                    array = rng.random(shape) < 0.5
                else:
                    array = rng.integers(0, 100, shape).astype(dtype)  # small ids: inside any vocabulary
            tensors.append((spec["name"], datatype, array))
        requests.append(tensors)
    return requests


def from_npz(path: Path, target: Target) -> list[Tensors]:
    """One request holding the file's arrays as they are, each named after a model input."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"cannot read {path} as an .npz of arrays ({exc}); write one with numpy.savez") from None
    names = [spec["name"] for spec in target.inputs]
    unknown, missing = sorted(set(arrays) - set(names)), sorted(set(names) - set(arrays))
    if unknown or missing:
        raise InvalidInput(f"{path} holds arrays {sorted(arrays)} but model {target.model!r} takes {names}; "
                           "name each array after an input (numpy.savez(file, **{input_name: array}))")
    return [tensors_from_arrays({name: arrays[name] for name in names})]


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInput(f"--images {folder} is not a folder; give a folder of image files")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise InvalidInput(f"{folder} holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _lines(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read --text {path} ({exc}); give a UTF-8 text file, one text a line") from None
    if not lines:
        raise InvalidInput(f"{path} holds no text; write one text a line")
    return lines


def _first_input(target: Target) -> str:
    if len(target.inputs) != 1:
        raise InvalidInput(f"model {target.model!r} takes {len(target.inputs)} inputs; images and texts go to a "
                           "model with one input (give the tensors with --input FILE.npz)")
    return str(target.inputs[0]["name"])


def build(target: Target, *, input_file: Path | None = None, images: Path | None = None,
          text: Path | None = None, fmt: str = "binary", route: str = "v2") -> Workload:
    """The requests for the options given: at most one of --input, --images and --text."""
    chosen = [name for name, value in (("--input", input_file), ("--images", images), ("--text", text)) if value]
    if len(chosen) > 1:
        raise InvalidInput(f"give one of {' and '.join(chosen)}, not both: a load test sends one kind of request")
    if fmt not in FORMATS or route not in ROUTES:
        raise InvalidInput(f"--format takes {' or '.join(FORMATS)} and --route {' or '.join(ROUTES)}")
    model_path = f"/{target.model}"
    if route == "rest":
        if target.protocol == "grpc" or not (images or text):
            raise InvalidInput("--route rest sends --images to /predict or --text to /embed over HTTP; "
                               "give one of them, or leave --route at v2")
        if images:
            files = _files(images)
            return Workload(f"{len(files)} images to /predict", f"{target.address}/predict{model_path}",
                            [image_upload(p.name, p.read_bytes()) for p in files])
        lines = _lines(text)  # type: ignore[arg-type]
        return Workload(f"{len(lines)} texts to /embed", f"{target.address}/embed{model_path}",
                        [texts_for_embed([line]) for line in lines])
    requests: list[Tensors]
    if images:
        name = _first_input(target)
        files = _files(images)
        requests = [[(name, "BYTES", np.array([p.read_bytes()], dtype=object))] for p in files]
        what = f"{len(files)} images as V2 BYTES"
    elif text:
        name = _first_input(target)
        lines = _lines(text)
        requests = [[(name, "BYTES", np.array([line.encode()], dtype=object))] for line in lines]
        what = f"{len(lines)} texts as V2 BYTES"
    elif input_file:
        requests, what = from_npz(input_file, target), f"tensors from {input_file.name}"
    else:
        requests, what = generated(target), "random tensors from the model's metadata"
    if target.protocol == "grpc":
        return Workload(f"{what} over gRPC", tensors=requests)
    if fmt == "json" and (images or any(d == "BYTES" and not _is_text(a) for r in requests for _, d, a in r)):
        raise InvalidInput("V2 JSON cannot carry image bytes; send images with --format binary (the default)")
    prepare = v2_json if fmt == "json" else v2_binary
    return Workload(f"{what}, V2 {fmt}", f"{target.address}/v2/models{model_path}/infer",
                    [prepare(r, target.outputs) for r in requests])


def _is_text(array: np.ndarray[Any, Any]) -> bool:
    try:
        for value in array.reshape(-1):
            bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
