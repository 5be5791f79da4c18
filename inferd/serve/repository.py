"""The model repository: a directory of packages, loaded and compiled for this machine.

Layouts accepted: `repo/<name>/manifest.json`, or `repo/<name>/<version>/manifest.json`
for several versions of one model (the highest version is the default). Names are
validated before they touch the file system so a request can never name a path.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from inferd.errors import InvalidModelName, ModelNotFound, PackageError
from inferd.package import MANIFEST_FILE
from inferd.runtime import CompiledModel, load
from inferd.types import ComputeUnit, Precision

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(name: str, what: str = "model name") -> str:
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidModelName(
            f"invalid {what} {name[:64]!r}: use letters, digits, '.', '_' and '-' (at most 128, no '..' or '/')"
        )
    return name


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def discover(root: Path) -> dict[str, dict[str, Path]]:
    """name -> version -> package directory, for every package under `root`."""
    found: dict[str, dict[str, Path]] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not MODEL_NAME.fullmatch(entry.name):
            continue
        if (entry / MANIFEST_FILE).is_file():
            found.setdefault(entry.name, {})["1"] = entry
            continue
        for version_dir in sorted(entry.iterdir()):
            if version_dir.is_dir() and MODEL_NAME.fullmatch(version_dir.name) and (version_dir / MANIFEST_FILE).is_file():
                found.setdefault(entry.name, {})[version_dir.name] = version_dir
    return found


class ModelRepository:
    def __init__(self, root: Path, *, compute_units: ComputeUnit = ComputeUnit.ALL,
                 precision: Precision = Precision.AUTO, max_in_flight: int = 64) -> None:
        self.root = root
        self._load_options = {"compute_units": compute_units, "precision": precision, "max_in_flight": max_in_flight}
        self._models: dict[str, dict[str, CompiledModel]] = {}
        self._lock = threading.Lock()

    def load_all(self) -> dict[str, str]:
        """Load every package found; returns name -> error for those that failed, so one bad package
        does not keep the others from serving."""
        failures: dict[str, str] = {}
        for name, versions in discover(self.root).items():
            for version, directory in versions.items():
                try:
                    self._add(name, version, load(directory, **self._load_options))  # type: ignore[arg-type]
                except PackageError as exc:
                    failures[f"{name}/{version}"] = exc.message
        return failures

    def _add(self, name: str, version: str, model: CompiledModel) -> None:
        with self._lock:
            self._models.setdefault(name, {})[version] = model

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=_version_key)

    def get(self, name: str, version: str | None = None) -> CompiledModel:
        check_name(name)
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} not found; available: {self.names()}")
        if version is None:
            return versions[max(versions, key=_version_key)]
        check_name(version, "version")
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; available: {self.versions(name)}")
        return versions[version]

    def close(self) -> None:
        with self._lock:
            for versions in self._models.values():
                for model in versions.values():
                    model.close()
            self._models.clear()
