"""Several requests as one engine run: stack their rows along the batch axis, then split the outputs back.

One helper for every caller that merges requests (`CompiledModel.predict_batch`,
the server's dynamic batcher, its text batches), so that the bounds that split
a batch's outputs are always the rows that went into it, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def rows(feeds: Mapping[str, np.ndarray]) -> int:
    """A request's rows: the leading axis of its inputs, which checked inputs share."""
    return int(next(iter(feeds.values())).shape[0])


def stack(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every input of `requests` concatenated along the batch axis, in the requests' order."""
    return {name: np.concatenate([feeds[name] for feeds in requests]) for name in requests[0]}


def split(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """A batch's outputs back per request, the i-th holding the next `sizes[i]` rows of every output (views)."""
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(value, bounds) for name, value in outputs.items()}
    return [{name: pieces[i] for name, pieces in parts.items()} for i in range(len(sizes))]
