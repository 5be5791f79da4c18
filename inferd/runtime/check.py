"""Prove that a package loads, on every backend here, before anyone is told it was written.

A graph can satisfy the ONNX checker and still be refused by a backend (an op
form newer than the opset the graph declares, an operator one backend lacks);
without this check the first to find out is whoever serves the package. So the
commands that write packages stage them beside the target, load them there on
every available backend at fp32, run one inference on the package's first
sample input (example inputs for a package without samples) through the
manifest's input names, compare the output names with the
manifest's, and only then move the package into place.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferd.errors import PackageError
from inferd.package import ModelPackage
from inferd.runtime import load
from inferd.runtime.backends import Backend, available_backends
from inferd.runtime.selection import example_feeds

# Operator sets a backend does not implement at all: a package that uses one (a scikit-learn pipeline's
# ai.onnx.ml operators) is served by the other backends, as `inferd.load` does, instead of being refused.
_FOREIGN_DOMAINS: dict[str, frozenset[str]] = {"openvino": frozenset({"ai.onnx.ml"})}


@dataclass(frozen=True)
class BackendCheck:
    """What one backend did with the package: loaded and ran it on `device`, or was skipped, and why."""

    backend: str
    device: str | None = None
    skipped: str | None = None


def check_loads(package: ModelPackage | str | os.PathLike[str]) -> list[BackendCheck]:
    """Load `package` on every available backend at fp32 and run one inference; raise PackageError naming each
    backend that fails, with its error. An in-memory package is saved to a temporary directory for it."""
    if not isinstance(package, ModelPackage):
        package = ModelPackage.load(package)
    if package.path is None:
        with tempfile.TemporaryDirectory(prefix="inferd-check-") as directory:
            return check_loads(package.save(Path(directory) / "package"))
    results: list[BackendCheck] = []
    failures: list[str] = []
    # A private compile cache: the check compiles from the staging path, which the package leaves.
    with tempfile.TemporaryDirectory(prefix="inferd-check-cache-") as cache_dir:
        for backend in available_backends():
            foreign = _foreign_domains(package, backend)
            if foreign:
                results.append(BackendCheck(backend.name, skipped=f"{backend.name} implements no {foreign} operators"))
                continue
            try:
                results.append(_run_once(package, backend, cache_dir))
            except Exception as exc:  # whatever a backend raises is the reason to refuse the package
                failures.append(f"{backend.name}: {_one_line(exc)}")
    name = package.manifest.name
    if failures:
        raise PackageError(
            f"{name} does not load on every backend here: {'; '.join(failures)}; "
            "change what the backend names (an operator it lacks: replace it in the source model and export again)"
        )
    if all(result.skipped for result in results):
        raise PackageError(f"no backend here can run {name}: {'; '.join(str(r.skipped) for r in results)}")
    return results


def save_checked(package: ModelPackage, path: str | os.PathLike[str], *, overwrite: bool = False) -> ModelPackage:
    """`package.save(path)`, but only once `check_loads` passed on the saved files: a package that fails leaves
    nothing at `path` (and an existing one there untouched)."""

    def check(staged: ModelPackage) -> None:
        try:
            check_loads(staged)
        except PackageError as exc:
            raise PackageError(f"{Path(path)} was not written: {exc.message}") from None

    return package.save(path, overwrite=overwrite, check=check)


def _run_once(package: ModelPackage, backend: Backend, cache_dir: str) -> BackendCheck:
    model = load(package, backend=backend.name, precision="fp32", cache_dir=cache_dir)
    try:
        outputs = model.predict(_one_input(package))
    finally:
        model.close()
    expected = [spec.name for spec in package.manifest.outputs]
    if sorted(outputs) != sorted(expected):
        raise PackageError(f"it returned outputs named {sorted(outputs)}, the manifest names {expected}")
    return BackendCheck(backend.name, device=model.load_info.device)


def _one_input(package: ModelPackage) -> dict[str, np.ndarray]:
    """The package's first sample; example inputs for a package without samples or with a fixed batch over 1."""
    specs = package.manifest.graph_inputs
    samples = package.samples()
    if samples and all(spec.shape[:1] in ((-1,), (1,)) for spec in specs):
        return {name: value[:1] for name, value in samples.items()}
    return example_feeds({spec.name: (spec.shape, spec.dtype) for spec in specs})


def _foreign_domains(package: ModelPackage, backend: Backend) -> str:
    used = {node.domain for node in package.onnx_model.graph.node}
    return ", ".join(sorted(used & _FOREIGN_DOMAINS.get(backend.name, frozenset())))


def _one_line(exc: BaseException) -> str:
    """Backend errors run over many lines (OpenVINO's name the failing operators last): all of them, joined."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() != "--")
