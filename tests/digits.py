"""A small CNN trained on scikit-learn's digits and converted to a package: a real classifier that builds in seconds,
for the tests that compress, benchmark or plot one."""

from __future__ import annotations

import numpy as np

from inferd.package import ModelPackage


def digits_package(train: int, epochs: int) -> tuple[ModelPackage, np.ndarray, np.ndarray]:
    """(the unsaved fp32 package, every digit as a (N, 1, 8, 8) float image in [0, 1], every label), trained on the
    first `train` digits for `epochs` epochs (one gives about 90% right; fifteen, near the ceiling)."""
    import torch
    from sklearn.datasets import load_digits

    from inferd.convert import convert_pytorch
    from inferd.types import TensorType

    data = load_digits()
    images = (data.images / 16).astype(np.float32)[:, np.newaxis]
    labels = data.target.astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )
    x, y = torch.from_numpy(images[:train]), torch.from_numpy(labels[:train])
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(train).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    package = convert_pytorch(
        net.eval(), inputs=[TensorType(name="digits", shape=(1, 1, 8, 8))], outputs=["logits"],
        classifier_labels=[str(i) for i in range(10)], sample_inputs=[{"digits": images[i]} for i in range(8)],
        metadata={"name": "digits"},
    )
    return package, images, labels
