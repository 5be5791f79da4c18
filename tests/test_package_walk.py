"""Every compression of two real models, on every backend and precision, compiled fresh and from the cache:
the package loads, takes its inputs under the manifest's names and answers under the manifest's output names.

A name a backend makes up (an fp16 graph's output came back from a fresh OpenVINO
compile as `graph_output_cast_0`) breaks every client that asks for the name the
package declares, so the walk compares names on both the first and the cached load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inferd
from inferd import optimize as opt
from inferd.errors import BackendUnavailable
from inferd.io.images import to_tensor
from inferd.package import ModelPackage
from inferd.runtime.backends import available_backends
from inferd.runtime.selection import example_feeds
from tests.text_crops import text_cls_package, text_crops

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# palettize:4 rather than :8, which takes longer to cluster; int8 and palettization calibrate on 4 inputs
COMPRESSIONS = ["fp16", "int8", "int8-weights", "palettize:4", "prune:0.5"]
MODELS = ["efficientnet-lite0", "text-cls"]
# AUTO and FP32 every backend runs; the reduced precisions only where the device offers them for the package
REQUIRED, OPTIONAL = ("auto", "fp32"), ("bf16", "fp16")


@pytest.fixture(scope="module")
def originals(default_package: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModelPackage, Path]]:
    """Each model's package, with a few real inputs for calibration as an .npz keyed by its input name."""
    from skimage import data

    root = tmp_path_factory.mktemp("walk")
    lite0 = ModelPackage.load(default_package)
    text_cls = text_cls_package().save(root / "text-cls")
    inputs = {
        "efficientnet-lite0": (lite0, [Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee",
                                                                                            "astronaut", "rocket")]),
        "text-cls": (text_cls, text_crops()[::9]),
    }
    found = {}
    for name, (package, images) in inputs.items():
        spec = package.manifest.inputs[0]
        calibration = root / f"{name}.npz"
        np.savez(calibration, **{spec.name: np.stack([to_tensor(image, spec) for image in images])})  # type: ignore[arg-type]
        found[name] = package, calibration
    return found


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("model", MODELS)
def test_every_load_keeps_the_manifest_names(
    model: str, compression: str, originals: dict[str, tuple[ModelPackage, Path]], tmp_path: Path
) -> None:
    original, calibration = originals[model]
    package = opt.compress(original, compression, calibration=calibration).save(tmp_path / "package")
    manifest = package.manifest
    inputs = [spec.name for spec in manifest.graph_inputs]
    outputs = sorted(spec.name for spec in manifest.outputs)
    samples = package.samples()
    feeds = ({name: value[:1] for name, value in samples.items()} if samples
             else example_feeds({spec.name: (spec.shape, spec.dtype) for spec in manifest.graph_inputs}))
    assert sorted(feeds) == sorted(inputs)

    wrong: list[str] = []
    walked: list[str] = []
    for backend in (b.name for b in available_backends()):
        for precision in (*REQUIRED, *OPTIONAL):
            cache_dir = tmp_path / f"cache-{backend}-{precision}"  # fresh: the first load compiles
            for attempt in ("uncached", "cached"):
                label = f"{backend} {precision} {attempt}"
                try:
                    loaded = inferd.load(package.path, backend=backend, precision=precision, cache_dir=cache_dir)
                except BackendUnavailable as exc:
                    if precision in REQUIRED:
                        wrong.append(f"{label}: does not load: {exc.message}")
                    break  # the backend refuses this precision for this package: nothing to walk
                try:
                    answer = loaded.predict(feeds)
                finally:
                    loaded.close()
                walked.append(label)
                if sorted(answer) != outputs:
                    wrong.append(f"{label}: outputs named {sorted(answer)}, the manifest says {outputs}")
                if loaded.load_info.cached != (attempt == "cached"):
                    wrong.append(f"{label}: load_info.cached is {loaded.load_info.cached}")
    assert not wrong, "\n".join(wrong)
    assert {label.rsplit(" ", 1)[0] for label in walked} >= {
        f"{b.name} {p}" for b in available_backends() for p in REQUIRED}
