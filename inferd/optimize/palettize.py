"""Palettization: k-means weight clustering stored as a lookup table plus packed indices.

Each weight keeps 2**bits distinct values (per tensor, or per group of
`group_size` rows along the first axis, which are output channels for Conv and
transposed Gemm). Every row is first divided by its largest magnitude and the
table is shared by the normalised rows (coremltools' per-channel scale): with
batch norm folded into the weights, rows differ in scale by 100x, and one table
for all of them would round the small rows to zero. On disk a weight costs
`bits` per element plus the tables and one float per row, so 4 bits is close to
8x smaller than float32; the decoding subgraph is constant-folded by every
backend, so inference runs at float speed.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import onnx

from inferd.manifest import CompressionStep
from inferd.optimize._graph import (
    Decoder,
    Weight,
    densify,
    derive,
    ensure_not_compressed,
    find_weights,
    initializer_bytes,
    pack_bits,
    replace_initializers,
    require_opset,
)
from inferd.optimize.errors import OptimizeError
from inferd.package import ModelPackage

KIND = "palettize"
BITS = (2, 4, 6, 8)
_ITERATIONS = 20
_ZERO_SHARE = 0.1  # keep 0 as an exact palette entry when pruning left this share of zeros


def palettize(
    package: ModelPackage,
    bits: int = 4,
    *,
    group_size: int | None = None,
    exclude: Collection[str] = (),
) -> ModelPackage:
    """New package with every Conv/Gemm/MatMul weight (except layers in `exclude`) palettized."""
    check_parameters(bits, group_size)
    ensure_not_compressed(package, KIND)
    model = densify(package.onnx_model)
    require_opset(model, 13, "palettization")
    decoder = Decoder("palette")
    weights = find_weights(model, exclude=exclude)
    errors: dict[str, float] = {}
    for weight in weights:
        table, indices, scales = _palette(weight.array, bits, group_size)
        _encode(decoder, weight, table, indices, scales, bits)
        errors[weight.layer] = snr_db(weight.array, _expand(table, indices, scales, weight.array.shape))
    encoded = replace_initializers(model, {w.name for w in weights}, decoder.initializers, decoder.nodes)
    step = CompressionStep(
        kind=KIND,
        parameters={"bits": bits, "group_size": group_size, "per_channel_scale": True},
        details=_details(model, encoded, weights, exclude, errors),
    )
    return derive(package, encoded, step)


def check_parameters(bits: int, group_size: int | None) -> None:
    if bits not in BITS:
        raise OptimizeError(f"palettization takes {', '.join(map(str, BITS))} bits, not {bits}: pick one of those")
    if group_size is not None and group_size < 1:
        raise OptimizeError(f"group_size must be a positive number of channels, not {group_size}")


def _expand(table: np.ndarray, indices: np.ndarray, scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    flat = np.take_along_axis(table, indices, axis=1).reshape(-1)
    return flat[: int(np.prod(shape))].reshape(shape) * scales


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - approximation) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * float(np.log10(max(signal, 1e-30) / noise))


def _palette(array: np.ndarray, bits: int, group_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table (groups, 2**bits), indices (groups, elements per group), row scales shaped to broadcast over `array`).

    The last group is padded with index 0.
    """
    rows = array.shape[0]
    peaks = np.sqrt(np.mean(np.square(array.reshape(rows, -1), dtype=np.float64), axis=1))
    scales = np.where(peaks > 0, peaks, 1.0).astype(np.float32).reshape(rows, *[1] * (array.ndim - 1))
    array = array / scales
    size = min(group_size or rows, rows)
    groups = -(-rows // size)
    per_group = size * (array.size // rows)
    flat = np.pad(array.reshape(-1).astype(np.float32), (0, groups * per_group - array.size))
    table = np.zeros((groups, 2**bits), dtype=np.float32)
    indices = np.zeros((groups, per_group), dtype=np.int64)
    for g in range(groups):
        real = min(per_group, array.size - g * per_group)
        values = flat[g * per_group : g * per_group + real]
        table[g], indices[g, :real] = _kmeans(values, 2**bits)
    return table, indices, scales


def _kmeans(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D Lloyd's algorithm on sorted values; quantile start so dense regions get more centres."""
    keep_zero = np.mean(values == 0) >= _ZERO_SHARE
    fitted = values[values != 0] if keep_zero else values
    free = k - 1 if keep_zero else k
    if fitted.size == 0:
        fitted = values
    centres = np.quantile(fitted, (np.arange(free) + 0.5) / free).astype(np.float64)
    for _ in range(_ITERATIONS):
        centres = np.unique(centres)
        assignment = _nearest(fitted, centres)
        sums = np.bincount(assignment, weights=fitted, minlength=centres.size)
        counts = np.bincount(assignment, minlength=centres.size)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(updated, centres):
            break
        centres = updated
    centres = np.unique(np.concatenate([centres, [0.0]]) if keep_zero else centres)
    table = np.zeros(k, dtype=np.float32)
    table[: centres.size] = centres
    return table, _nearest(values, centres.astype(np.float32))


def _nearest(values: np.ndarray, sorted_centres: np.ndarray) -> np.ndarray:
    if sorted_centres.size == 1:
        return np.zeros(values.shape, dtype=np.int64)
    edges = (sorted_centres[1:] + sorted_centres[:-1]) / 2
    return np.searchsorted(edges, values).astype(np.int64)


def _encode(decoder: Decoder, weight: Weight, table: np.ndarray, indices: np.ndarray, scales: np.ndarray, bits: int) -> None:
    base = f"{weight.name}/palette"
    unpacked = decoder.unpack(base, pack_bits(indices, bits), bits, indices.size)
    grid = decoder.reshape(unpacked, indices.shape, f"{base}/indices")
    lut = decoder.tensor(f"{base}/lut", table)
    gathered = decoder.node("GatherElements", [lut, grid], f"{base}/values", axis=1)
    flat = decoder.reshape(gathered, (-1,), f"{base}/flat_values")
    normalised = decoder.reshape(decoder.slice(flat, weight.array.size, f"{base}/trimmed"), weight.array.shape,
                                 f"{base}/normalised")
    decoder.node("Mul", [normalised, decoder.tensor(f"{base}/scales", scales)], weight.name)


def _details(
    model: onnx.ModelProto,
    encoded: onnx.ModelProto,
    weights: list[Weight],
    exclude: Collection[str],
    errors: dict[str, float],
) -> dict[str, Any]:
    before = sum(w.array.nbytes for w in weights)
    prefixes = tuple(f"{w.name}/palette/" for w in weights)
    after = sum(init.ByteSize() for init in encoded.graph.initializer if init.name.startswith(prefixes))
    return {
        "layers": len(weights),
        "kept_layers": sorted(exclude),
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "initializer_bytes_before": initializer_bytes(model),
        "initializer_bytes_after": initializer_bytes(encoded),
        "weight_snr_db": {layer: round(value, 2) for layer, value in errors.items()},
    }
