"""Typed execution, and how `Precision.AUTO` earns a reduced precision: by measurement on the model's own inputs.

The package's type is the minimum precision, as in Core ML: an fp32 package
computes in fp32 unless AUTO measures that a reduced precision the hardware runs
natively (bf16 on AVX512-BF16/AMX CPUs, fp16 on GPUs and NPUs) gives the same
answers; an fp16 package never computes below fp16, so never in bf16 (8 bits of
mantissa to fp16's 11) unless bf16 is asked for by name.

The measurement runs the package's sample inputs (`samples.npz`, written at
conversion; real photographs for image inputs otherwise) through the candidate
engine and through ONNX Runtime on the package as it is, and judges every output
with `inferd.tolerance`. A candidate that fails falls back to fp32 and the
reason is kept: in `LoadInfo.precision_choice`, in the cache beside the backend
choice (so it is measured once per package and machine), and in what `inferd
compile`, `inferd info` and the server report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.convert.reference import run_in_batches
from inferd.convert.samples import representative_samples
from inferd.package import ModelPackage
from inferd.runtime.backends import Backend, Engine
from inferd.runtime.devices import Device
from inferd.tolerance import OutputAgreement, compare_all
from inferd.types import Precision

_RANK = {"fp32": 3, "fp16": 2, "mixed": 2, "bf16": 1, "int8": 3}
"""How much mantissa each package type keeps; an int8 package's float parts are fp32, so it ranks with fp32."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What precision a model computes in and why: the rule that applied, or what the measurement found."""

    requested: str
    chosen: str
    reason: str
    considered: str | None = None
    """The reduced precision AUTO measured, when it measured one."""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Each output's agreement with the reference at the considered precision."""

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "chosen": self.chosen, "considered": self.considered,
                "reason": self.reason, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionChoice:
        return cls(requested=str(data["requested"]), chosen=str(data["chosen"]), reason=str(data["reason"]),
                   considered=data.get("considered"), outputs=list(data.get("outputs", [])))


@dataclass(frozen=True)
class Plan:
    """What to compile first on one device, and what to fall back to if the measurement refuses it."""

    precision: Precision
    fallback: Precision | None
    rule: str


def plan(backend: Backend, device: Device, requested: Precision, package_precision: str) -> Plan | None:
    """The concrete precision to compile at, or None when the device cannot honour the request."""
    if requested is not Precision.AUTO:
        if backend.effective_precision(device, requested) is None:
            return None
        return Plan(requested, None, f"{requested.value} was asked for")
    native = backend.effective_precision(device, Precision.AUTO) or "fp32"
    if _RANK.get(native, 3) >= _RANK.get(package_precision, 3):
        return Plan(Precision(native), None,
                    f"{native} keeps the package's {package_precision} type" if native != "fp32"
                    else "fp32 is the device's native precision here")
    if native == "bf16" and package_precision in ("fp16", "mixed"):
        # typed execution: an fp16 package never drops to bf16; fp16 where the device runs it, else fp32
        lower = "fp16" if backend.effective_precision(device, Precision.FP16) else "fp32"
        return Plan(Precision(lower), None, f"an {package_precision} package never computes in bf16 unless asked")
    return Plan(Precision(native), Precision.FP32, "")


def typed_execution_rule(package_precision: str) -> str:
    """The rule for a package of this type, in the words `inferd info` shows."""
    if _RANK.get(package_precision, 3) == 3:
        return ("computes in fp32; --precision auto (the default) uses bf16 or fp16 only where the hardware runs it "
                "natively and this package's samples keep every output within tolerance of fp32")
    if package_precision in ("fp16", "mixed"):
        return "never computes below fp16 (no bf16 unless --precision bf16 asks for it)"
    return f"computes in {package_precision} or above"


def package_samples(package: ModelPackage) -> dict[str, np.ndarray] | None:
    """The package's own typical inputs, photographs for an image model written without them, else None."""
    return package.samples() or representative_samples(package.manifest.graph_inputs)


NO_SAMPLES = ("the package keeps no typical inputs to measure {considered} on, so fp32 (convert it with "
              "--samples FILE.npz, arrays keyed by input name, to let AUTO measure {considered})")


def reference_outputs(package: ModelPackage, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime on the CPU, on the package's graph as it is: the precision the package's type promises."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(package.model_path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = run_in_batches(lambda feeds: session.run(names, feeds), samples,
                             one_at_a_time=not package.manifest.batch_dynamic)
    return dict(zip(names, results, strict=True))


def measure(engine: Engine, package: ModelPackage, samples: Mapping[str, np.ndarray],
            reference: Mapping[str, np.ndarray]) -> list[OutputAgreement]:
    """Every output of `engine` on the samples, judged against `reference` by the tolerance that fits it."""
    names = list(reference)
    results = run_in_batches(lambda feeds: [engine.infer(feeds)[name] for name in names], samples,
                             one_at_a_time=not package.manifest.batch_dynamic)
    classifier = package.manifest.classifier
    return compare_all(reference, dict(zip(names, results, strict=True)),
                       classifier=(classifier.output, classifier.activation) if classifier else None)


def verdict(requested: Precision, considered: str, agreements: list[OutputAgreement]) -> PrecisionChoice:
    """Keep the reduced precision only if every output stays within tolerance; say which did not."""
    failed = [a for a in agreements if not a.passed]
    outputs = [a.as_dict() for a in agreements]
    if not failed:
        return PrecisionChoice(requested.value, considered, f"{considered} measured within tolerance of fp32 on "
                               f"every output", considered, outputs)
    why = "; ".join(f"{a.output} ({a.kind}): {a.reason}" for a in failed)
    return PrecisionChoice(requested.value, "fp32", f"{considered} changed the answers, so fp32: {why}", considered,
                           outputs)
