"""The ModelPackage: a directory with `model.onnx` (plus external-data files) and `manifest.json`.

ONNX is the interchange format every backend here reads; the manifest carries
what ONNX does not (preprocessing, labels, provenance, fidelity). `samples.npz`
holds a few typical inputs, written at conversion, so a later compile can check a
reduced precision on real inputs of this model rather than on noise. Files the
preprocessing needs besides the graph (a text model's tokenizer) are the
package's *assets* and travel with it. The sha256 of every file is recorded so a
truncated copy or a tampered weight file is caught at load time, naming the
file, instead of producing wrong answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from pydantic import ValidationError

from inferd.errors import PackageError
from inferd.manifest import Manifest
from inferd.types import TextType
from inferd.version import __version__

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SAMPLES_FILE = "samples.npz"
_EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GiB


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelPackage:
    """A model plus its manifest, either in memory (fresh from a converter) or on disk.

    `assets` maps package-relative names to files to copy in on `save` (a text
    model's tokenizer); a package on disk carries its own along when saved elsewhere.
    `samples` are typical inputs by graph input name, batch first, written to
    `samples.npz` on `save` (a package on disk carries its file along instead).
    """

    def __init__(
        self,
        manifest: Manifest,
        model: onnx.ModelProto | None = None,
        path: Path | None = None,
        assets: Mapping[str, str | os.PathLike[str]] | None = None,
        samples: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if model is None and path is None:
            raise ValueError("a ModelPackage needs an ONNX model or a directory")
        self.manifest = manifest
        self._model = model
        self.path = path
        self.assets = {_relative(name): Path(source) for name, source in (assets or {}).items()}
        self._samples = dict(samples) if samples else None

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> ModelPackage:
        """Open a package directory; with `verify`, check every file against its recorded sha256."""
        directory = Path(path)
        manifest_path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise PackageError(f"{directory} is not a model package directory (expected a folder with {MANIFEST_FILE})")
        if not manifest_path.is_file():
            raise PackageError(f"{manifest_path} is missing: {directory} is not a model package")
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except ValidationError as exc:
            raise PackageError(f"{manifest_path} is not a valid manifest: {exc}") from exc
        package = cls(manifest, path=directory)
        if verify:
            package.verify_files()
        return package

    def verify_files(self) -> None:
        """Raise PackageError naming the first file that is missing or whose bytes changed."""
        assert self.path is not None
        if MODEL_FILE not in self.manifest.files:
            raise PackageError(f"{self.path / MANIFEST_FILE} lists no {MODEL_FILE}")
        for relative, expected in self.manifest.files.items():
            file = self.path / relative
            if not file.is_file():
                raise PackageError(f"{file} is missing from the package; copy the whole package directory again")
            if sha256_file(file) != expected:
                raise PackageError(
                    f"{file} does not match the sha256 in {MANIFEST_FILE}: it is truncated, corrupt or was modified; "
                    "re-create the package or copy it again"
                )

    @property
    def model_path(self) -> Path:
        """Path of `model.onnx` on disk; an in-memory package must be saved first."""
        if self.path is None:
            raise PackageError("this package is only in memory; call .save(path) first")
        return self.path / MODEL_FILE

    @property
    def onnx_model(self) -> onnx.ModelProto:
        if self._model is None:
            self._model = onnx.load(str(self.model_path))
        return self._model

    @property
    def content_hash(self) -> str:
        """A digest of every file's digest: the identity of the package's bytes, for cache keys."""
        listing = json.dumps(sorted(self.manifest.files.items())).encode()
        return hashlib.sha256(listing).hexdigest()

    def samples(self) -> dict[str, np.ndarray] | None:
        """The typical inputs kept with the package, or None for a package written without them."""
        if self._samples is None and self.path is not None and SAMPLES_FILE in self.manifest.files:
            with np.load(self.path / SAMPLES_FILE, allow_pickle=False) as data:
                self._samples = {name: data[name] for name in data.files}
        return self._samples

    def with_samples(self, samples: Mapping[str, np.ndarray]) -> ModelPackage:
        """The same package, keeping `samples` (by graph input name, batch first) as its typical inputs."""
        return ModelPackage(self.manifest, model=self._model, path=self.path, assets=self.assets, samples=samples)

    def size_bytes(self) -> int:
        """Bytes of what serving reads: the graph, its weights and assets. The samples are measurement data kept
        beside the model, so a compression ratio or a memory budget does not count them."""
        if self.path is None:
            return self.onnx_model.ByteSize()
        return sum((self.path / relative).stat().st_size for relative in self.manifest.files if relative != SAMPLES_FILE)

    # -- checking ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check files, the ONNX graph, and that the manifest's inputs and outputs match the graph."""
        if self.path is not None:
            self.verify_files()
        try:
            onnx.checker.check_model(str(self.model_path) if self.path else self.onnx_model)
        except onnx.checker.ValidationError as exc:
            raise PackageError(f"{MODEL_FILE} is not a valid ONNX model: {exc}") from exc
        graph = self.onnx_model.graph
        initializers = {init.name for init in graph.initializer}
        graph_inputs = [i.name for i in graph.input if i.name not in initializers]
        graph_outputs = [o.name for o in graph.output]
        declared_inputs = [spec.name for spec in self.manifest.graph_inputs]
        declared_outputs = [spec.name for spec in self.manifest.outputs]
        if sorted(graph_inputs) != sorted(declared_inputs):
            raise PackageError(f"manifest inputs {declared_inputs} do not match the ONNX graph's inputs {graph_inputs}")
        if sorted(graph_outputs) != sorted(declared_outputs):
            raise PackageError(
                f"manifest outputs {declared_outputs} do not match the ONNX graph's outputs {graph_outputs}"
            )
        classifier = self.manifest.classifier
        if classifier is not None and classifier.output not in declared_outputs:
            raise PackageError(f"classifier output {classifier.output!r} is not among the outputs {declared_outputs}")
        if self.path is not None:
            for asset in self.required_assets():
                if asset not in self.manifest.files:
                    raise PackageError(f"{self.path / MANIFEST_FILE} lists no {asset}, which the inputs need")

    def required_assets(self) -> list[str]:
        """Package files the inputs' preprocessing reads (tokenizers), besides the model itself."""
        return [spec.tokenizer for spec in self.manifest.inputs if isinstance(spec, TextType)]

    # -- writing -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             check: Callable[[ModelPackage], None] | None = None) -> ModelPackage:
        """Write the package atomically: a reader never sees a half-written directory. `check`, when given, gets
        the written package in its staging directory and refuses it by raising: then nothing is written at
        `path`, and a package already there stays as it was."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise PackageError(f"{target} already exists; pass overwrite=True (--force on the command line)")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model = self.onnx_model
            large = model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
            onnx.save_model(
                model,
                str(staging / MODEL_FILE),
                save_as_external_data=large,
                all_tensors_to_one_file=True,
                location=f"{MODEL_FILE}.data",
            )
            for name, source in self.asset_files().items():
                destination = staging / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
            samples = self.samples()
            if samples is not None:
                np.savez(staging / SAMPLES_FILE, **samples)  # type: ignore[arg-type]  # names, not allow_pickle
            files = {
                file.relative_to(staging).as_posix(): sha256_file(file)
                for file in sorted(staging.rglob("*"))
                if file.is_file()
            }
            manifest = self.manifest.model_copy(update={"files": files, "inferd_version": __version__})
            (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
            if check is not None:
                check(ModelPackage(manifest, model=self._model, path=staging, samples=samples))
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelPackage(manifest, model=self._model, path=target, samples=samples)

    def asset_files(self) -> dict[str, Path]:
        """Every file to copy besides the graph and the samples: the package's own (when on disk), then the given
        assets."""
        sources: dict[str, Path] = {}
        if self.path is not None:
            model_files = {MODEL_FILE, f"{MODEL_FILE}.data", SAMPLES_FILE}
            sources = {name: self.path / name for name in self.manifest.files if name not in model_files}
        sources.update(self.assets)
        for name in self.required_assets():
            if name not in sources:
                raise PackageError(
                    f"the text input needs its tokenizer {name!r} but the package has no such file; "
                    f"pass assets={{{name!r}: path_to_tokenizer_json}} when creating the package"
                )
        for name, source in sources.items():
            if not source.is_file():
                raise PackageError(f"package file {name!r} should be copied from {source}, which is not a file")
        return sources


def _relative(name: str) -> str:
    """An asset name is a path inside the package: it may not climb out of it or clash with the graph."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.name in (MODEL_FILE, MANIFEST_FILE,
                                                                                    SAMPLES_FILE):
        raise PackageError(f"asset name {name!r} must be a relative path inside the package, not {MODEL_FILE}, "
                           f"{MANIFEST_FILE} or {SAMPLES_FILE}")
    return path.as_posix()
