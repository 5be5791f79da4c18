"""Tiny models trained in the tests on scikit-learn's handwritten digits, one per source framework.

Trained (not random) weights give real decision boundaries, so top-1 agreement
between a source and its package means something; each trains in about a second.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

LABELS = [str(i) for i in range(10)]
TRAIN = 1400  # the first rows train, the rest are held out for the fidelity and prediction checks


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in 0..1, shape (n, 8, 8), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def held_out(count: int = 32) -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits()
    return images[TRAIN : TRAIN + count], labels[TRAIN : TRAIN + count]


def as_pixels(image: np.ndarray) -> np.ndarray:
    """A digit as the 8-bit greyscale picture a user would have (0..255)."""
    return np.rint(image * 255).astype(np.uint8)


def train_torch_cnn(*, batch_fixed_reshape: bool = False) -> Any:
    """A small NCHW CNN; `batch_fixed_reshape` flattens with view(1, -1), the classic batch-1 export trap."""
    model = _digits_cnn()
    model.load_state_dict(_trained_cnn_weights())
    model.batch_fixed_reshape = batch_fixed_reshape  # after training, which needs real batches
    return model.eval()


@cache
def _trained_cnn_weights() -> dict[str, Any]:
    """Trained once per test session; every test gets its own module with these weights."""
    import torch

    torch.manual_seed(0)
    model = _digits_cnn()
    images, labels = digits()
    _fit_torch(model, torch.from_numpy(images[:TRAIN, None]), torch.from_numpy(labels[:TRAIN]), batch=64, epochs=4)
    return model.state_dict()


def _digits_cnn() -> Any:
    import torch

    class DigitsCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.batch_fixed_reshape = False
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(8)
            self.head = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
            return self.head(y.view(1, -1) if self.batch_fixed_reshape else y.flatten(1))

    return DigitsCNN()


@cache
def train_torch_mlp() -> Any:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    images, labels = digits()
    _fit_torch(model, torch.from_numpy(images[:TRAIN].reshape(TRAIN, 64)), torch.from_numpy(labels[:TRAIN]),
               batch=64, epochs=6)
    return model.eval()


def _fit_torch(model: Any, x: Any, y: Any, *, batch: int, epochs: int) -> None:
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(x) - batch + 1, batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[start : start + batch]), y[start : start + batch])
            loss.backward()
            optimizer.step()
    model.eval()


@cache
def train_keras_cnn() -> Any:
    """A small NHWC Keras CNN with a softmax head, as TensorFlow users build them."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    images, labels = digits()
    model.fit(images[:TRAIN, :, :, None], labels[:TRAIN], epochs=3, batch_size=64, verbose=0)
    return model
