"""scikit-learn pipelines trained on the digits, converted through skl2onnx, loaded and compared with sklearn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferd
from inferd.convert import ConvertOptions, ImagePreprocessing, convert_any, convert_sklearn
from inferd.errors import ConversionError
from tests.convert_models import TRAIN, digits

pytest.importorskip("skl2onnx")
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = digits()
    flat = images.reshape(len(images), 64)
    return flat[:TRAIN], labels[:TRAIN], flat[TRAIN:]


@pytest.fixture(scope="module")
def classifiers() -> dict[str, Any]:
    train, labels, _ = rows()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(train[:600], labels[:600]),
        "forest, string classes": RandomForestClassifier(20, max_depth=8, random_state=0).fit(train, names[labels]),
    }


@pytest.mark.parametrize("name", ["logistic", "forest, string classes"])
def test_classifier_matches_predict_proba(name: str, classifiers: dict[str, Any], tmp_path: Path) -> None:
    estimator = classifiers[name]
    _, _, test = rows()
    package = convert_sklearn(estimator, sample_inputs=test, metadata={"name": "digits-sklearn"})
    manifest = package.manifest
    fidelity = manifest.fidelity
    assert fidelity is not None and fidelity.passed and fidelity.samples == len(test)
    assert fidelity.max_abs_diff <= 1e-4 and fidelity.top1_agreement == 1.0
    assert fidelity.reference.startswith("scikit-learn")
    assert [o.name for o in manifest.outputs] == ["label", "probabilities"]
    assert manifest.classifier is not None and manifest.classifier.activation == "none"
    assert manifest.classifier.labels == [str(c) for c in estimator.classes_]

    saved = package.save(tmp_path / "pkg")
    assert saved.path is not None
    model = inferd.load(saved.path, precision="fp32")  # OpenVINO has no ai.onnx.ml ops: ONNX Runtime serves it
    assert model.load_info.backend == "onnxruntime"
    out = model.predict({"input": test})
    assert np.abs(out["probabilities"] - estimator.predict_proba(test)).max() <= 1e-4
    assert (out["label"].astype(str) == estimator.predict(test).astype(str)).all()


def test_regressors_match_predict(tmp_path: Path) -> None:
    train, labels, test = rows()
    for estimator in (make_pipeline(StandardScaler(), Ridge()), GradientBoostingRegressor(n_estimators=30, random_state=0)):
        estimator.fit(train, labels.astype(np.float64))
        package = convert_sklearn(estimator, sample_inputs=test)
        fidelity = package.manifest.fidelity
        assert fidelity is not None and fidelity.passed and fidelity.max_abs_diff <= 1e-4
        assert package.manifest.classifier is None
        saved = package.save(tmp_path / type(estimator).__name__)
        assert saved.path is not None
        got = inferd.load(saved.path, precision="fp32").predict({"input": test})["variable"]
        assert np.abs(got.reshape(-1) - estimator.predict(test)).max() <= 1e-4


def test_pickled_estimator_needs_consent_then_converts_once(classifiers: dict[str, Any], tmp_path: Path) -> None:
    import joblib

    path = tmp_path / "digits.joblib"
    joblib.dump(classifiers["logistic"], path)
    with pytest.raises(ConversionError, match=r"pickle: loading it runs.*allow_pickle=True \(--allow-pickle\)"):
        convert_any(path)
    with pytest.raises(ConversionError, match=r"--image does not apply to a sklearn_pickle source"):
        convert_any(path, ConvertOptions(allow_pickle=True, image=ImagePreprocessing()))
    options = ConvertOptions(allow_pickle=True)
    first = inferd.load(path, convert_options=options, cache_dir=tmp_path / "cache", precision="fp32")
    second = inferd.load(path, convert_options=options, cache_dir=tmp_path / "cache", precision="fp32")
    assert (first.load_info.conversion_cached, second.load_info.conversion_cached) == (False, True)
    _, _, test = rows()
    assert (second.predict({"input": test})["label"] == classifiers["logistic"].predict(test)).all()


def test_unfitted_and_unsupported_estimators() -> None:
    with pytest.raises(ConversionError, match="not fitted"):
        convert_sklearn(LogisticRegression())
    from sklearn.cluster import KMeans

    train, _, _ = rows()
    with pytest.raises(ConversionError, match="neither a classifier nor a regressor"):
        convert_sklearn(KMeans(2, n_init=1, random_state=0).fit(train[:100]))
