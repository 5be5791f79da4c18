"""Classification post-processing: raw scores to labelled, ranked predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from inferd.errors import InvalidInput

Activation = Literal["softmax", "sigmoid", "none"]


@dataclass(frozen=True)
class Prediction:
    """One ranked class; `probability` is the activated score (the raw score for activation="none")."""

    label: str
    index: int
    probability: float

    def as_dict(self) -> dict[str, str | int | float]:
        """Plain types only, so the result goes straight into JSON."""
        return asdict(self)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax that subtracts the maximum first, so large logits do not overflow to inf/nan."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    exps = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return exps / np.sum(exps, axis=axis, keepdims=True)


def top_k(
    scores: np.ndarray,
    labels: Sequence[str],
    k: int = 5,
    *,
    activation: Activation = "softmax",
) -> list[list[Prediction]]:
    """Rank the k best classes of each row of an (N, num_classes) batch; a 1-D vector is one row.

    argpartition finds the k best in linear time, so only k scores per row are
    sorted: this matters for models with tens of thousands of classes.
    """
    if k < 1:
        raise InvalidInput(f"k must be ≥ 1, got {k}")
    rows = np.asarray(scores)
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise InvalidInput(f"classification scores must have shape (N, num_classes), got {np.shape(scores)}")
    num_classes = rows.shape[1]
    if len(labels) not in (0, num_classes):
        raise InvalidInput(
            f"the model outputs {num_classes} class scores but {len(labels)} labels were given; "
            "the label list must have one entry per class, in the model's class order"
        )
    probabilities = _activate(rows, activation)
    k = min(k, num_classes)
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probabilities, best, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(best, order, axis=1)
    return [
        [Prediction(str(labels[i]) if len(labels) else str(i), i, float(row[i])) for i in indices]
        for row, indices in zip(probabilities, ranked.tolist(), strict=True)
    ]


def _activate(scores: np.ndarray, activation: Activation) -> np.ndarray:
    if activation == "softmax":
        return softmax(scores, axis=1)
    if activation == "sigmoid":
        # 1 / (1 + e^-x) written via logaddexp so that large |x| neither overflows nor warns.
        return np.exp(-np.logaddexp(0.0, -scores.astype(np.float64)))
    if activation == "none":
        return scores
    raise InvalidInput(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")
