"""`"prune:0.5,palettize:4"` → compressions applied in order, each optionally under the accuracy guard."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

from inferd.errors import InferdError
from inferd.optimize.errors import OptimizeError
from inferd.optimize.evalset import EvalSet, build_eval_set
from inferd.optimize.fp16 import to_fp16
from inferd.optimize.guard import guarded
from inferd.optimize.int8 import Method, StaticQuantization, quantize_weights
from inferd.optimize.opset import record_upgrade, upgrade_for
from inferd.optimize.palettize import Palettization
from inferd.optimize.palettize import check_parameters as check_palette
from inferd.optimize.prune import check_parameters as check_prune
from inferd.optimize.prune import prune
from inferd.package import ModelPackage

SYNTAX = "fp16, int8, int8-weights, palettize:BITS[:GROUP], prune:SPARSITY or prune:N:M, joined by commas"


@dataclass(frozen=True)
class Step:
    kind: str
    arguments: tuple[float, ...] = ()

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{a:g}" for a in self.arguments)])


def parse(spec: str) -> list[Step]:
    """Validate the whole specification before any (slow) compression starts."""
    arity = {"fp16": (0,), "int8": (0,), "int8-weights": (0,), "palettize": (1, 2), "prune": (1, 2)}
    return [_checked(step, text) for step, text in split_steps(spec, SYNTAX, OptimizeError, arity)]


def split_steps(
    spec: str, syntax: str, error: type[InferdError], arity: Mapping[str, tuple[int, ...]]
) -> list[tuple[Step, str]]:
    """`"kind:1:2,kind2"` → steps with their source text, each of a kind in `arity` with as many values as it
    allows; the caller checks the values themselves."""
    steps = []
    for text in (part.strip() for part in spec.split(",")):
        if not text:
            raise error(f"empty step in {spec!r}; expected {syntax}")
        kind, *raw = (piece.strip() for piece in text.split(":"))
        try:
            arguments = tuple(float(value) for value in raw)
        except ValueError:
            raise error(f"{text!r}: {raw} are not numbers; expected {syntax}") from None
        step = Step(kind.lower(), arguments)
        if step.kind not in arity:
            raise error(f"unknown compression {step.kind!r} in {text!r}; expected {syntax}")
        if len(step.arguments) not in arity[step.kind]:
            raise error(f"{text!r} has the wrong number of values; expected {syntax}")
        steps.append((step, text))
    kinds = [step.kind for step, _ in steps]
    if len(set(kinds)) != len(kinds):
        raise error(f"{spec!r} applies a compression twice; list each once")
    return steps


def _checked(step: Step, text: str) -> Step:
    if step.kind == "palettize":
        bits, *group = step.arguments
        if not bits.is_integer() or (group and not group[0].is_integer()):
            raise OptimizeError(f"{text!r}: bits and group size are whole numbers")
        check_palette(int(bits), int(group[0]) if group else None)
    if step.kind == "prune":
        if len(step.arguments) == 2:
            n, m = step.arguments
            if not (n.is_integer() and m.is_integer()):
                raise OptimizeError(f"{text!r}: n:m pruning takes whole numbers, e.g. prune:2:4")
            check_prune(0.0, (int(n), int(m)))
        else:
            check_prune(step.arguments[0], None)
    return step


def compress(
    package: ModelPackage,
    spec: str,
    *,
    calibration: str | os.PathLike[str] | None = None,
    method: Method = "percentile",
    max_drop: float | None = None,
    eval_data: str | os.PathLike[str] | EvalSet | None = None,
    eval_samples: int = 200,
) -> ModelPackage:
    """Apply the steps of `spec` in order; with `max_drop`, each step is guarded on the evaluation set."""
    *_, (_, result) = compress_each(package, spec, calibration=calibration, method=method, max_drop=max_drop,
                                    eval_data=eval_data, eval_samples=eval_samples)
    return result


def compress_each(
    package: ModelPackage,
    spec: str,
    *,
    calibration: str | os.PathLike[str] | None = None,
    method: Method = "percentile",
    max_drop: float | None = None,
    eval_data: str | os.PathLike[str] | EvalSet | None = None,
    eval_samples: int = 200,
) -> Iterator[tuple[Step, ModelPackage]]:
    """`compress`, yielding the package after every step: the report covers each step, the CLI shows progress.

    A graph below the opset a step writes is upgraded before the first step (see `inferd.optimize.opset`)."""
    steps = parse(spec)
    eval_set: EvalSet | None = None
    if max_drop is not None:
        if max_drop < 0:
            raise OptimizeError(f"max_drop is a number of accuracy points >= 0, not {max_drop}")
        eval_set = eval_data if isinstance(eval_data, EvalSet) else build_eval_set(
            package.manifest, eval_data, eval_samples)
    package, upgrade = upgrade_for(package, [step.kind for step in steps])
    for step in steps:
        if step.kind in ("int8", "palettize"):
            measured = _measured_once(step, package, calibration, method)
            package = measured.keeping_float() if eval_set is None else _guarded_once(
                measured, package, eval_set, max_drop or 0.0)
        else:
            compression = _compression(step)
            package = compression(package, ()) if eval_set is None else guarded(
                package, compression, eval_set, max_drop or 0.0)
        package, upgrade = record_upgrade(package, upgrade), None  # on the step that compressed the upgraded graph
        yield step, package


def _measured_once(
    step: Step, package: ModelPackage, calibration: str | os.PathLike[str] | None, method: Method
) -> StaticQuantization | Palettization:
    """The compressions that measure a package once (calibration, second moments) and cut any float set from it."""
    if step.kind == "int8":
        return StaticQuantization(package, calibration, method=method)
    group = int(step.arguments[1]) if len(step.arguments) > 1 else None
    return Palettization(package, int(step.arguments[0]), group_size=group, calibration=calibration)


def _guarded_once(
    measured: StaticQuantization | Palettization, package: ModelPackage, eval_set: EvalSet, max_drop: float
) -> ModelPackage:
    """Every trial of the guard is cut from one measurement; int8 may keep activations in float as well as layers."""
    return guarded(package, lambda _, keep: measured.keeping_float(keep), eval_set, max_drop,
                   measured.float_candidates())


def _compression(step: Step) -> Callable[[ModelPackage, Collection[str]], ModelPackage]:
    """The compressions that need no measurement of the package: fp16, int8 weights, pruning."""
    args = step.arguments
    if step.kind == "fp16":
        return lambda p, exclude: to_fp16(p, exclude=exclude)
    if step.kind == "int8-weights":
        return lambda p, exclude: quantize_weights(p, exclude=exclude)
    if len(args) == 2:
        return lambda p, exclude: prune(p, n_m=(int(args[0]), int(args[1])), exclude=exclude)
    return lambda p, exclude: prune(p, args[0], exclude=exclude)
