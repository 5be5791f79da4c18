"""Compression on a real, freshly trained digits CNN: accuracy before/after, sizes on disk, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd.optimize import (
    EvalSet,
    OptimizeError,
    compress,
    palettize,
    predict,
    prune,
    quantize_static,
    quantize_weights,
    to_fp16,
)
from inferd.optimize.int8 import METHODS, Method
from inferd.package import ModelPackage
from tests.digits import digits_package

TRAIN = 1400


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelPackage, EvalSet, Path]:
    """(saved fp32 package, labelled test split, calibration .npz of training images)."""
    package, images, labels = digits_package(TRAIN, epochs=15)
    root = tmp_path_factory.mktemp("digits")
    calibration = root / "calibration.npz"
    np.savez(calibration, digits=images[:200])
    return package.save(root / "fp32"), EvalSet({"digits": images[TRAIN:]}, labels[TRAIN:]), calibration


def accuracy(package: ModelPackage, eval_set: EvalSet) -> float:
    assert eval_set.labels is not None
    return 100 * float(np.mean(predict(package.onnx_model, eval_set).argmax(1) == eval_set.labels))


def saved(package: ModelPackage, tmp_path: Path, name: str) -> ModelPackage:
    return ModelPackage.load(package.save(tmp_path / name).path or tmp_path / name)


def test_the_trained_model_is_worth_compressing(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    package, eval_set, _ = digits
    assert accuracy(package, eval_set) > 90


@pytest.mark.parametrize("method", METHODS)
def test_static_int8_loses_at_most_half_a_point(
    digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path, method: Method
) -> None:
    package, eval_set, calibration = digits
    int8 = saved(quantize_static(package, calibration, method=method), tmp_path, "int8")
    lost = round((accuracy(package, eval_set) - accuracy(int8, eval_set)) * len(eval_set) / 100)
    assert lost <= 1  # 0.5 points of 397 test digits is at most 1 digit; measured: 0
    assert int8.manifest.precision == "int8"
    assert int8.manifest.compression[-1].parameters["method"] == method
    assert int8.size_bytes() < package.size_bytes() / 2


def test_weight_only_int8_is_four_times_smaller(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    package, eval_set, _ = digits
    int8 = saved(quantize_weights(package), tmp_path, "w8")
    details = int8.manifest.compression[-1].details
    assert details["weight_bytes_before"] / details["weight_bytes_after"] > 3.5
    assert accuracy(package, eval_set) - accuracy(int8, eval_set) <= 0.5
    assert int8.size_bytes() < package.size_bytes() / 2


def test_fp16_halves_the_weights(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    package, eval_set, _ = digits
    fp16 = saved(to_fp16(package), tmp_path, "fp16")
    assert fp16.manifest.precision == "fp16"
    assert abs(accuracy(package, eval_set) - accuracy(fp16, eval_set)) <= 0.5
    assert fp16.size_bytes() < package.size_bytes() * 0.7


def test_grouped_4_bit_palettization(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    package, eval_set, _ = digits
    small = saved(palettize(package, 4, group_size=16), tmp_path, "pal4")
    details = small.manifest.compression[-1].details
    assert details["weight_bytes_before"] / details["weight_bytes_after"] > 6  # 8x less the lookup tables
    assert accuracy(package, eval_set) - accuracy(small, eval_set) <= 1.0
    assert small.size_bytes() < package.size_bytes() / 2
    assert small.manifest.compression[-1].parameters == {
        "bits": 4, "group_size": 16, "per_channel_scale": True, "rounding": "nearest entry (no calibration data)"}


def test_palettization_with_calibration_data_picks_entries_by_gptq(
    digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path
) -> None:
    """Same tables, entries chosen with error feedback: the outputs move less than with the nearest entries."""
    from inferd.optimize import fidelity

    package, eval_set, calibration = digits
    nearest = palettize(package, 2, group_size=4)
    refined = saved(palettize(package, 2, group_size=4, calibration=calibration), tmp_path, "pal2")
    assert refined.manifest.compression[-1].parameters["rounding"].startswith("GPTQ on ")
    reference = predict(package.onnx_model, eval_set)
    snr = {name: fidelity(reference, predict(p.onnx_model, eval_set))["snr_db"] for name, p in
           (("nearest", nearest), ("gptq", refined))}
    assert snr["gptq"] > snr["nearest"] + 3  # measured: 8.7 -> 12.8 dB (accuracy 93.5 -> 93.2%: one digit)
    assert refined.size_bytes() <= nearest.save(tmp_path / "nearest").size_bytes() * 1.01


def test_palettized_package_runs_on_every_backend(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    from inferd.runtime import load

    package, eval_set, _ = digits
    small = palettize(package, 4).save(tmp_path / "pal")
    expected = predict(small.onnx_model, eval_set)[:1]
    for backend in ("onnxruntime", "openvino"):
        got = load(small, backend=backend, precision="fp32").predict({"digits": eval_set.batch(0, 1)["digits"]})
        np.testing.assert_allclose(np.asarray(next(iter(got.values()))).reshape(1, -1), expected, atol=1e-3)


def test_half_pruned_model_is_smaller_and_its_drop_measured(
    digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path
) -> None:
    package, eval_set, _ = digits
    pruned = saved(prune(package, 0.5), tmp_path, "prune")
    details = pruned.manifest.compression[-1].details
    assert all(abs(s - 0.5) < 0.01 for s in details["sparsity_per_layer"].values())
    assert details["weight_bytes_after"] < 0.6 * details["weight_bytes_before"]
    drop = accuracy(package, eval_set) - accuracy(pruned, eval_set)
    assert 0 <= drop < 20, f"50% magnitude pruning without fine-tuning dropped {drop:.1f} points"


def test_prune_then_palettize_keeps_zeros(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    package, eval_set, _ = digits
    both = saved(compress(package, "prune:0.5,palettize:4:16"), tmp_path, "both")
    assert [s.kind for s in both.manifest.compression] == ["prune", "palettize"]
    assert accuracy(package, eval_set) - accuracy(both, eval_set) < 20


def test_max_drop_keeps_sensitive_layers(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    package, eval_set, _ = digits
    baseline = accuracy(package, eval_set)
    assert baseline - accuracy(palettize(package, 2), eval_set) > 1.0  # the budget breaks on its own
    guarded = compress(package, "palettize:2", max_drop=1.0, eval_data=eval_set)
    guard = guarded.manifest.compression[-1].details["accuracy_guard"]
    assert guard["kept"]
    assert baseline - accuracy(guarded, eval_set) <= 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("palettize:3", "2, 4, 6, 8 bits"),
        ("palettize:9", "2, 4, 6, 8 bits"),
        ("prune:1.0", "[0, 1)"),
        ("prune:-0.1", "[0, 1)"),
        ("prune:4:2", "0 < n < m"),
        ("quantise", "unknown compression"),
        ("palettize:x", "not numbers"),
        ("fp16,fp16", "twice"),
    ],
)
def test_bad_specifications_say_what_to_fix(spec: str, message: str, digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    with pytest.raises(OptimizeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        compress(digits[0], spec)


def test_compressing_twice_is_refused(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    once = palettize(digits[0], 8)
    with pytest.raises(OptimizeError, match="already compressed with 'palettize'"):
        palettize(once, 4)


def test_calibration_folder_errors(digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path) -> None:
    from inferd.zoo.efficientnet_lite0 import IMAGE

    image_package = ModelPackage(digits[0].manifest.model_copy(update={"inputs": [IMAGE]}), model=digits[0].onnx_model)
    with pytest.raises(OptimizeError, match="does not exist"):
        quantize_static(image_package, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(OptimizeError, match="holds no images"):
        quantize_static(image_package, tmp_path / "empty")


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_calibration_one_sample_at_a_time_matches_all_at_once(
    method: Method, digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path
) -> None:
    """onnxruntime's calibrator holds every tensor of every sample it is given (23 GB on a 736x736 detector);
    inferd gives it one sample at a time and must still get the ranges it computes from all of them at once."""
    from onnxruntime.quantization.calibrate import create_calibrator

    from inferd.optimize.calibration import FeedReader, calibration_feeds
    from inferd.optimize.int8 import _CALIBRATOR_OPTIONS, _CALIBRATORS, activation_ranges

    package, _, calibration = digits
    assert package.path is not None
    model, feeds = package.path / "model.onnx", calibration_feeds(package.manifest, calibration, 64)
    streamed = activation_ranges(model, feeds, method, tmp_path)
    whole = create_calibrator(model, augmented_model_path=str(tmp_path / "whole.onnx"),
                              calibrate_method=_CALIBRATORS[method], extra_options=_CALIBRATOR_OPTIONS[method])
    whole.collect_data(FeedReader([feeds[i] for i in range(len(feeds))]))
    expected = whole.compute_data()
    assert len(feeds) == 64 and set(streamed.keys()) == set(expected.keys())
    for name, data in expected.items():
        np.testing.assert_array_equal(np.asarray(streamed[name].range_value), np.asarray(data.range_value), name)


def test_static_int8_weights_fit_int16_pairs(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    """uint8 x int8 kernels without VNNI add neighbouring products in a saturating int16: 255 * 128 must bound them."""
    from onnx import numpy_helper

    int8 = quantize_static(digits[0], digits[2])
    weights = {i.name: numpy_helper.to_array(i) for i in int8.onnx_model.graph.initializer
               if i.data_type == 3 and i.name.endswith("_quantized")}
    assert len(weights) == 4  # two 3x3 convolutions, two Gemm layers
    for name, levels in weights.items():
        flat = np.abs(levels.reshape(levels.shape[0], -1).astype(np.int32))
        if levels.ndim == 2:  # Gemm (transB): pairs of neighbouring inputs
            assert (flat[:, 0::2] + flat[:, 1::2]).max() <= 128, name
        else:  # 3x3: the pairing is the backend's, so every level stays within 64
            assert flat.max() <= 64, name
        assert flat.max() >= 64, f"{name} wastes its range"
    assert int8.manifest.compression[-1].details["refined_layers"] == 4


def test_static_int8_keeps_chosen_layers_float_from_one_calibration(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    """Layers kept in float read the float weights and activations again; no calibration is repeated for them."""
    from inferd.optimize import fidelity
    from inferd.optimize.int8 import StaticQuantization

    package, eval_set, calibration = digits
    quantization = StaticQuantization(package, calibration)
    all_int8 = quantization.keeping_float()
    layers = [node.name for node in package.onnx_model.graph.node if node.op_type in ("Conv", "Gemm")]
    first_float = quantization.keeping_float(layers[:1])
    all_float = quantization.keeping_float(layers)

    def weight_inputs(candidate: ModelPackage) -> dict[str, str]:
        return {node.name: node.input[1] for node in candidate.onnx_model.graph.node if node.name in layers}

    floats = {node.name: node.input[1] for node in package.onnx_model.graph.node if node.name in layers}
    assert weight_inputs(first_float)[layers[0]] == floats[layers[0]]
    assert all(weight_inputs(first_float)[name] != floats[name] for name in layers[1:])
    assert weight_inputs(all_float) == floats
    assert not any(init.name.endswith("_quantized") for init in all_float.onnx_model.graph.initializer)
    assert first_float.manifest.compression[-1].details["kept_layers"] == sorted(layers[:1])
    # Float layers still see clipped inputs (the quantizer's dropped Relus would not), so with every layer in
    # float only the pooling layers' uint8 inputs differ from fp32; without the Relus this was 4 dB.
    reference = predict(package.onnx_model, eval_set)
    assert fidelity(reference, predict(all_float.onnx_model, eval_set))["snr_db"] > 40
    # The logits come from the last layer itself, not through a uint8 round trip.
    producers = {output: node.op_type for node in all_int8.onnx_model.graph.node for output in node.output}
    assert producers["logits"] == "Gemm"
    with pytest.raises(OptimizeError, match="no layers or activations named"):
        quantization.keeping_float(["not-a-layer"])


def test_static_int8_with_every_candidate_float_is_the_float_model(digits: tuple[ModelPackage, EvalSet, Path]) -> None:
    """The guard's candidates are layers and activations; all of them in float leave no quantization at all."""
    from inferd.optimize import fidelity
    from inferd.optimize.int8 import StaticQuantization

    package, eval_set, calibration = digits
    quantization = StaticQuantization(package, calibration)
    candidates = quantization.float_candidates()
    layers = [node.name for node in package.onnx_model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert candidates[: len(layers)] == layers
    activations = candidates[len(layers):]
    assert package.manifest.inputs[0].name in activations
    everything = quantization.keeping_float(candidates).onnx_model
    assert not [node.op_type for node in everything.graph.node if "Quantize" in node.op_type]
    reference = predict(package.onnx_model, eval_set)
    assert fidelity(reference, predict(everything, eval_set))["snr_db"] > 100
    # One activation in float: its pair goes, every other pair stays.
    one = quantization.keeping_float(activations[:1])
    quantized_inputs = {node.input[0] for node in one.onnx_model.graph.node if node.op_type == "QuantizeLinear"}
    assert activations[0] not in quantized_inputs
    assert set(activations[1:]) <= quantized_inputs
    assert one.manifest.compression[-1].details["kept_activations"] == activations[:1]


def test_max_drop_keeps_int8_activations_float_when_layers_are_not_enough(
    digits: tuple[ModelPackage, EvalSet, Path], tmp_path: Path
) -> None:
    """Calibrated on faint digits, the activation ranges clip real ones: no choice of float layers repairs that."""
    from inferd.optimize import AccuracyBudgetError, guarded
    from inferd.optimize.int8 import StaticQuantization

    package, eval_set, _ = digits
    name = package.manifest.inputs[0].name
    faint = tmp_path / "faint.npz"
    np.savez(faint, **{name: eval_set.batch(0, 16)[name] * 0.2})
    baseline = accuracy(package, eval_set)
    quantization = StaticQuantization(package, faint)
    assert baseline - accuracy(quantization.keeping_float(), eval_set) > 1.0  # the budget breaks on its own
    with pytest.raises(AccuracyBudgetError, match="even with all"):
        guarded(package, lambda _, keep: quantization.keeping_float(keep), eval_set, 1.0,
                [node.name for node in package.onnx_model.graph.node if node.op_type in ("Conv", "Gemm")])
    rescued = compress(package, "int8", calibration=faint, max_drop=1.0, eval_data=eval_set)
    guard = rescued.manifest.compression[-1].details["accuracy_guard"]
    assert baseline - accuracy(rescued, eval_set) <= 1.0
    assert rescued.manifest.compression[-1].details["kept_activations"]
    assert guard["drop_all_compressed"] > 1.0 >= guard["drop"]
