"""The roofline (issue 20.7): MACs counted from ONNX graphs, this machine's peaks measured and cached, and
`inferd bench --plot` / `inferd optimize --report --plot` drawing real PNGs from real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.bench import macs
from inferd.bench.peak import PRECISIONS, MachinePeaks, Peak, machine_peaks
from inferd.bench.roofline import roofline
from inferd.package import ModelPackage
from inferd.runtime.cache import cache_root
from tests.digits import digits_package
from tests.test_cli import inferd

PNG = b"\x89PNG\r\n\x1a\n"


def _weights(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]], outputs: dict[str, list[int | str]],
           initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_macs_of_a_hand_counted_graph() -> None:
    """Every counted operator once, with the batch bound to 2 and the numbers worked out by hand."""
    nodes = [
        # x (N,3,16,16) → 8 channels, 3x3, stride 1, pad 1: 8*16*16 outputs × 3*9 MACs each
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),  # elementwise: 8*16*16 ops, not MACs
        # depthwise 3x3, stride 2: 8*8*8 outputs × 1*9
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=8, strides=[2, 2], pads=[1, 1, 1, 1]),
        # grouped 1x1, 2 groups: 16*8*8 outputs × 4 inputs each
        helper.make_node("Conv", ["c2", "w3"], ["c3"], group=2),
        # transposed 2x2 stride 2, 16 → 4 channels: 16*8*8 inputs × 4*2*2
        helper.make_node("ConvTranspose", ["c3", "w4"], ["t"], strides=[2, 2]),
        helper.make_node("MaxPool", ["t"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),  # 4*8*8 outputs × 4
        helper.make_node("Flatten", ["p"], ["f"]),  # (N, 256)
        helper.make_node("Gemm", ["f", "w5"], ["g"], transB=1),  # 256 → 10: 10 × 256
        # batched MatMul with broadcast: (N, 10) → (N,1,10) @ (3, 10, 5) → (N, 3, 1, 5) ... via Unsqueeze
        helper.make_node("Unsqueeze", ["g", "axes"], ["u"]),
        helper.make_node("MatMul", ["u", "w6"], ["y"]),
    ]
    model = _model(nodes, {"x": ["batch", 3, 16, 16]}, {"y": ["batch", 3, 1, 5]}, [
        _weights("w1", 8, 3, 3, 3), _weights("w2", 8, 1, 3, 3), _weights("w3", 16, 4, 1, 1),
        _weights("w4", 16, 4, 2, 2), _weights("w5", 10, 256), _weights("w6", 3, 10, 5),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")])
    count = macs.count(model, {"x": np.zeros((2, 3, 16, 16), np.float32)})
    per_sample = {"Conv": 8 * 16 * 16 * 27 + 8 * 8 * 8 * 9 + 16 * 8 * 8 * 4, "ConvTranspose": 16 * 8 * 8 * 16,
                  "Gemm": 10 * 256, "MatMul": 3 * 5 * 10}
    assert count.by_op == {op: 2 * n for op, n in per_sample.items()}
    assert count.macs == 2 * sum(per_sample.values()) and count.int8_macs == 0 and count.unknown == ()
    assert count.other_ops == 2 * (8 * 16 * 16 + 4 * 8 * 8 * 4)  # Relu and the pooling windows


def test_int8_macs_are_the_qdq_pairs_and_computed_shapes_are_observed() -> None:
    """A Conv fed by DequantizeLinear on data and weights counts as int8. A Slice that ends where the input's
    shape says (position embeddings in exported transformers) is one `onnx.shape_inference` leaves unsized: one
    real run sizes it."""
    scale, zero = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")
    weights = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.int8), "wq")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),  # (1,4,6,6): 4*6*6 outputs × 2*9 int8 MACs
        helper.make_node("Shape", ["x"], ["length"], start=2, end=3),  # [8]
        helper.make_node("Slice", ["table", "zero", "length"], ["rows"]),  # (8, 6)
        helper.make_node("MatMul", ["rows", "w"], ["y"]),  # 8 × 6 × 5 float MACs
    ]
    model = _model(nodes, {"x": [1, 2, "height", 8]}, {"c": [1, 4, "h", 6], "y": ["rows", 5]}, [
        scale, zero, weights, _weights("table", 64, 6), _weights("w", 6, 5),
        numpy_helper.from_array(np.array([0], np.int64), "zero")])
    observed = macs.bind_inputs(model, {"x": (1, 2, 8, 8)})
    assert any(v.name == "rows" and not v.type.tensor_type.shape.dim[0].dim_value for v in observed.graph.value_info)
    count = macs.count(model, {"x": np.zeros((1, 2, 8, 8), np.float32)})
    assert count.int8_macs == 4 * 6 * 6 * 18 and count.by_op["MatMul"] == 8 * 6 * 5
    assert count.macs == count.int8_macs + 8 * 6 * 5 and count.unknown == ()


def test_a_graph_nothing_can_size_is_counted_as_a_lower_bound() -> None:
    """A custom operator neither shape inference nor ONNX Runtime knows: what follows it is named, not guessed."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"]),  # 4*6*6 × 2*9
             helper.make_node("Mystery", ["c"], ["m"], domain="com.example"),
             helper.make_node("MatMul", ["m", "w2"], ["y"], name="after")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_weights("w1", 4, 2, 3, 3), _weights("w2", 6, 5)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    count = macs.count(model, {"x": np.zeros((1, 2, 8, 8), np.float32)})
    assert count.macs == 4 * 6 * 6 * 18 and count.unknown == ("MatMul after",)


def test_efficientnet_lite0_is_about_four_hundred_million_macs(default_package: Path) -> None:
    """0.385 GMACs: EfficientNet-B0's published 0.39 B multiply-adds less its squeeze-excitation blocks, which
    Lite0 drops (their pooled 1x1 convolutions are under 1 M MACs); convolutions are 99.7% of it."""
    package = ModelPackage.load(default_package)
    count = macs.count(package.onnx_model, {"image": np.zeros((4, 3, 224, 224), np.float32)})
    assert count.unknown == () and count.int8_macs == 0
    assert count.macs == 4 * 385_187_552
    assert count.by_op["Gemm"] == 4 * 1280 * 1000


def test_roofline_of_a_mixed_int8_graph() -> None:
    peaks = MachinePeaks("cpu", ("avx2",), 2, "x", {
        "fp32": Peak("fp32", 50.0, 100.0, "k"), "int8": Peak("int8", 200.0, 400.0, "k"),
        "bf16": Peak("bf16", absent="no native bf16 kernel on this CPU")})
    count = macs.OpCount(macs=3_000_000_000, int8_macs=2_000_000_000, other_ops=0)
    # ideal: 2e9 float ops at 100 GOP/s (20 ms) + 4e9 int8 ops at 400 GOP/s (10 ms) = 30 ms; measured 60 ms
    placed = roofline(count, batch=2, precision="fp32", latency_ms=60.0, peaks=peaks)
    assert placed.macs_per_sample == 1_500_000_000 and placed.int8_macs_per_sample == 1_000_000_000
    assert (placed.achieved_gops, placed.peak_gops, placed.fraction) == pytest.approx((100.0, 200.0, 0.5))
    absent = roofline(count, batch=2, precision="bf16", latency_ms=60.0, peaks=peaks)
    assert absent.fraction is None and "no native bf16" in absent.note


def test_peaks_are_measured_once_then_read_from_the_cache() -> None:
    """Measured briefly (seconds=0.02) into the tests' cache, where the commands below find them."""
    first = machine_peaks(refresh=True, seconds=0.02)
    assert not first.cached and set(first.peaks) == set(PRECISIONS)
    fp32 = first.peaks["fp32"]
    assert fp32.absent is None and fp32.all_threads_gops and fp32.all_threads_gops > 0 and fp32.kernel
    for peak in first.peaks.values():  # each precision is measured on a native kernel, or says why it is not
        assert (peak.all_threads_gops or 0) > 0 and peak.one_thread_gops and peak.kernel if peak.absent is None \
            else peak.all_threads_gops is None and peak.absent
    written = [json.loads(path.read_text()) for path in (cache_root() / "peaks").glob("*.json")]
    assert [data["features"] for data in written] == [list(first.features)]
    second = machine_peaks(seconds=0.02)
    assert second.cached and second.peaks == first.peaks


def test_an_avx2_only_machine_reports_what_it_has(tmp_path: Path) -> None:
    """oneDNN's ISA cap makes this CPU an AVX2-only one: fp32 and int8 are measured on AVX2 kernels, bf16 and
    fp16 are absent with OpenVINO's reason, and the cap keys a cache entry of its own."""
    script = ("import json, sys; from pathlib import Path; from inferd.bench.peak import machine_peaks; "
              "print(json.dumps(machine_peaks(root=Path(sys.argv[1]), seconds=0.02).as_dict()))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    peaks = json.loads(result.stdout)["peaks"]
    assert peaks["fp32"]["all_threads_gops"] > 0 and peaks["int8"]["all_threads_gops"] > 0
    assert "avx2" in peaks["int8"]["kernel"].lower()
    assert not any(word in (p["kernel"] or "") for p in peaks.values() for word in ("avx512", "amx"))
    for precision in ("bf16", "fp16"):
        assert peaks[precision]["all_threads_gops"] is None and f"no {precision} kernel" in peaks[precision]["absent"]
    (capped,) = (tmp_path / "peaks").glob("*.json")
    machine_peaks(seconds=0.02)  # uncapped, in the tests' cache (read back when the test above wrote it)
    assert capped.name not in {path.name for path in (cache_root() / "peaks").glob("*.json")}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small CNN trained for a moment on scikit-learn's digits, as a package, and an .npz of digits to evaluate on;
    and this machine's peaks in the tests' cache (measured briefly unless already there), which `inferd bench` reads."""
    machine_peaks(seconds=0.02)
    package, images, labels = digits_package(1000, epochs=1)
    root = tmp_path_factory.mktemp("digits")
    np.savez(root / "eval.npz", digits=images[1000:1100], labels=labels[1000:1100])
    return package.save(root / "package").path or root / "package", root / "eval.npz"


def test_bench_plots_and_reports_achieved_vs_peak(digits: tuple[Path, Path], tmp_path: Path) -> None:
    package, _ = digits
    png, report = tmp_path / "plots" / "bench.png", tmp_path / "bench.json"
    result = inferd("bench", str(package), "--runs", "10", "--plot", str(png), "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    page = png.with_suffix(".html").read_text()
    assert 'src="data:image/png;base64,' in page and "of peak" in page  # the page carries its picture
    data = json.loads(report.read_text())
    # by hand: conv 16*8*8 × 9, conv 32*4*4 × 16*9, linear 128 × 64, linear 64 × 10
    assert data["operations"]["macs_per_sample"] == 16 * 64 * 9 + 32 * 16 * 144 + 128 * 64 + 64 * 10
    assert data["peaks"]["cached"] and data["peaks"]["features"]
    for config in data["configs"]:
        placed = config["roofline"]
        assert placed["achieved_gops"] == pytest.approx(2 * 91776 / config["raw"]["median_ms"] / 1e6, rel=0.01)
        assert placed["fraction"] is None or 0 < placed["fraction"] == pytest.approx(
            placed["achieved_gops"] / placed["peak_gops"], rel=0.01)
    fp32 = next(c for c in data["configs"] if c["precision"] == "fp32")
    assert fp32["roofline"]["fraction"] is not None
    assert "instruction sets found:" in result.stdout and "peak fp32:" in result.stdout
    assert f"{fp32['name']}: achieved" in result.stdout and "GOP/s peak" in result.stdout


def test_optimize_report_plot(digits: tuple[Path, Path], tmp_path: Path) -> None:
    package, eval_data = digits
    png = tmp_path / "optimize.png"
    result = inferd("optimize", str(package), "-o", str(tmp_path / "fp16"), "--pipeline", "fp16", "--eval-data",
                    str(eval_data), "--plot", str(png), "-b", "onnxruntime")
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    page = png.with_suffix(".html").read_text()
    assert "<td>fp16</td>" in page and "onnxruntime ms" in page and "accuracy" in page


def test_a_plot_that_is_not_a_png_is_refused_before_any_work(digits: tuple[Path, Path], tmp_path: Path) -> None:
    package, _ = digits
    for command in (["bench", str(package)], ["optimize", str(package), "-o", str(tmp_path / "o"), "-s", "fp16"]):
        result = inferd(*command, "--plot", str(tmp_path / "plot.jpg"))
        assert result.returncode == 2 and "give a file name ending in .png" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
