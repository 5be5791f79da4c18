"""Magnitude pruning, stored as a 1-bit keep-mask plus the surviving values.

A mask costs 1/32 of the dense float tensor, so a weight pruned to sparsity s
takes (1 - s) + 1/32 of its size on disk. The decoder (CumSum over the mask
indexes the packed values) is constant-folded at load like the palette's.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

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

KIND = "prune"


def prune(
    package: ModelPackage,
    sparsity: float = 0.5,
    *,
    n_m: tuple[int, int] | None = None,
    exclude: Collection[str] = (),
) -> ModelPackage:
    """New package with the smallest-magnitude weights of each layer set to zero.

    `sparsity` is the share of each layer's weights removed (unstructured); `n_m`
    = (n, m) instead keeps the n largest of every m consecutive weights of a row,
    the pattern sparse tensor cores accelerate.
    """
    check_parameters(sparsity, n_m)
    ensure_not_compressed(package, KIND)
    model = densify(package.onnx_model)
    require_opset(model, 13, "pruning")
    decoder = Decoder("prune")
    weights = find_weights(model, exclude=exclude)
    skipped: list[str] = []
    encoded_weights: list[Weight] = []
    achieved: dict[str, float] = {}
    for weight in weights:
        pruned = _n_m(weight.array, *n_m) if n_m else sparsify(weight.array, sparsity)
        if pruned is None:
            skipped.append(weight.layer)
            continue
        _encode(decoder, weight, pruned)
        encoded_weights.append(weight)
        achieved[weight.layer] = round(float(np.mean(pruned == 0)), 4)
    encoded = replace_initializers(model, {w.name for w in encoded_weights}, decoder.initializers, decoder.nodes)
    before = sum(w.array.nbytes for w in encoded_weights)
    prefixes = tuple(f"{w.name}/prune/" for w in encoded_weights)
    step = CompressionStep(
        kind=KIND,
        parameters={"sparsity": sparsity if n_m is None else 1 - n_m[0] / n_m[1], "n_m": list(n_m) if n_m else None},
        details={
            "layers": len(encoded_weights),
            "kept_layers": sorted(exclude),
            "skipped_layers": skipped,
            "weight_bytes_before": before,
            "weight_bytes_after": sum(
                i.ByteSize() for i in encoded.graph.initializer if i.name.startswith(prefixes)
            ),
            "initializer_bytes_before": initializer_bytes(model),
            "initializer_bytes_after": initializer_bytes(encoded),
            "sparsity_per_layer": achieved,
        },
    )
    return derive(package, encoded, step)


def check_parameters(sparsity: float, n_m: tuple[int, int] | None) -> None:
    if n_m is not None:
        n, m = n_m
        if not 0 < n < m:
            raise OptimizeError(f"n:m pruning needs 0 < n < m (keep n of every m weights), got {n}:{m}")
    elif not 0 <= sparsity < 1:
        raise OptimizeError(
            f"sparsity is the share of weights removed and must be in [0, 1), got {sparsity}; e.g. 0.5 removes half"
        )


def sparsify(array: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the `sparsity` share of smallest magnitudes (ties broken by position, so the share is exact)."""
    flat = array.reshape(-1).copy()
    count = round(sparsity * flat.size)
    if count:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0
    return flat.reshape(array.shape)


def _n_m(array: np.ndarray, n: int, m: int) -> np.ndarray | None:
    rows = array.reshape(array.shape[0], -1)
    if rows.shape[1] % m:
        return None  # rows that do not split into groups of m are left dense (reported as skipped)
    groups = rows.reshape(-1, m).copy()
    drop = np.argsort(np.abs(groups), axis=1)[:, : m - n]
    np.put_along_axis(groups, drop, 0, axis=1)
    return groups.reshape(array.shape)


def _encode(decoder: Decoder, weight: Weight, pruned: np.ndarray) -> None:
    base = f"{weight.name}/prune"
    flat = pruned.reshape(-1)
    mask = flat != 0
    values = flat[mask] if mask.any() else np.zeros(1, dtype=np.float32)
    bits = decoder.unpack(base, pack_bits(mask, 1), 1, flat.size)
    position = decoder.node("CumSum", [bits, decoder.constant("axis0", np.array(0, dtype=np.int32))], f"{base}/rank")
    index = decoder.node("Sub", [position, decoder.constant("one", np.array(1, dtype=np.int32))], f"{base}/index")
    gathered = decoder.node("Gather", [decoder.tensor(f"{base}/values", values.astype(np.float32)), index],
                            f"{base}/gathered", axis=0)
    keep = decoder.node("Cast", [bits], f"{base}/keep", to=1)
    dense = decoder.node("Mul", [gathered, keep], f"{base}/dense")
    decoder.reshape(dense, pruned.shape, weight.name)
