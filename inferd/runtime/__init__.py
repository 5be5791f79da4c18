"""Compile a package for the best compute unit of this machine and run it.

`load` is the one entry point: it validates the package, finds the eligible
(backend, device) pairs for the requested compute units and precision, measures
them on first use, compiles the winner through the on-disk cache and warms it up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from inferd.convert import ConvertOptions
from inferd.errors import BackendUnavailable
from inferd.package import ModelPackage
from inferd.runtime import cache
from inferd.runtime.backends import Engine, EngineOptions, available_backends, backend_named, devices
from inferd.runtime.compiled import CompiledModel, LoadInfo, OverflowPolicy
from inferd.runtime.devices import Device, cpu_count
from inferd.runtime.precision import (
    NO_SAMPLES,
    PrecisionChoice,
    measure,
    package_samples,
    plan,
    reference_outputs,
    verdict,
)
from inferd.runtime.selection import Candidate, eligible, example_feeds, fastest
from inferd.runtime.sources import resolve_source
from inferd.types import ComputeUnit, Precision

__all__ = ["CompiledModel", "Device", "LoadInfo", "devices", "load"]


def load(
    model: str | os.PathLike[str] | ModelPackage,
    *,
    compute_units: ComputeUnit | str = ComputeUnit.ALL,
    precision: Precision | str = Precision.AUTO,
    backend: str = "auto",
    threads: int | None = None,
    streams: int = 1,
    spin: bool | None = None,
    max_in_flight: int = 64,
    overflow: OverflowPolicy = "wait",
    warmup_rows: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    convert_options: ConvertOptions | None = None,
) -> CompiledModel:
    """Load a model package, or a model file converted on first use, compiled for this machine.

    `convert_options` describe a model file (image preprocessing, labels, input
    shape) for its conversion; the converted package is cached, so only the first
    load converts. `warmup_rows` is the largest batch the caller will run (a
    server's max batch size): the warm-up takes that batch's memory up front.
    See CompiledModel.load_info for what happened.
    """
    started = time.perf_counter()
    if isinstance(model, ModelPackage):
        package, conversion_cached = model, None
    else:
        resolved = resolve_source(model, options=convert_options, cache_dir=cache_dir)
        package, conversion_cached = resolved.package, resolved.conversion_cached
    if package.path is None:
        raise BackendUnavailable("save the package first (package.save(path)): backends compile from files")
    compute_units = ComputeUnit(compute_units)
    precision = Precision(precision)
    options = EngineOptions(threads=threads or cpu_count(), streams=streams,
                            spin=streams == 1 if spin is None else spin)
    root = cache.cache_root(cache_dir)

    backends = available_backends() if backend == "auto" else (backend_named(backend),)
    candidates = eligible(backends, compute_units, precision, package.manifest.precision)
    if not candidates:
        raise BackendUnavailable(
            f"no backend here runs {compute_units.value} at precision {precision.value}; "
            f"devices: {[d.label for d in devices()]}"
        )
    request = {"compute_units": compute_units.value, "precision": precision.value, "backend": backend,
               "threads": options.threads, "streams": streams, "spin": options.spin}
    choice_file = cache.choice_path(root, package.content_hash, request)
    remembered = cache.read_json(choice_file) or {}
    if remembered:
        cache.mark_used(choice_file)
    winner = next((c for c in candidates if c.label == remembered.get("device")), None)
    choices = {label: PrecisionChoice.from_dict(data) for label, data in remembered.get("precision", {}).items()}

    compile_started = time.perf_counter()
    selection_ms: dict[str, float] = remembered.get("selection_ms", {})
    if winner is not None and winner.label in choices:
        engine, cached = _compile(package, winner, Precision(choices[winner.label].chosen), root, options)
    else:
        compiled, choices = _compile_each(package, candidates, precision, root, options)
        if len(compiled) > 1:
            feeds = example_feeds({spec.name: (spec.shape, spec.dtype) for spec in package.manifest.graph_inputs})
            label, selection_ms = fastest({k: engine for k, (engine, _) in compiled.items()}, feeds)
        else:
            label, selection_ms = next(iter(compiled)), {}
        winner = next(c for c in candidates if c.label == label)
        engine, cached = compiled[label]
        cache.write_json(choice_file, {"device": label, "selection_ms": selection_ms,
                                       "precision": {k: v.as_dict() for k, v in choices.items()}})
    compile_seconds = time.perf_counter() - compile_started
    _warm_up(engine, package, warmup_rows, streams)
    info = LoadInfo(
        backend=winner.backend.name, device=winner.device.id, precision=engine.precision, cached=cached,
        seconds=time.perf_counter() - started, compile_seconds=compile_seconds, selection_ms=selection_ms,
        conversion_cached=conversion_cached, precision_choice=choices[winner.label].as_dict(),
    )
    return CompiledModel(package, engine, info, max_in_flight=max_in_flight, overflow=overflow)


def _warm_up(engine: Engine, package: ModelPackage, rows: int, streams: int) -> None:
    """First-run allocations and lazy kernel selection happen here, not on a request.

    Each stream runs once at `rows` (a server's max batch size), because engines
    keep the memory of their largest run (ONNX Runtime's arena): taken at load,
    it is part of the baseline rather than growth under the first full batches.
    """
    feeds = example_feeds({spec.name: (spec.shape, spec.dtype) for spec in package.manifest.graph_inputs},
                          rows=rows if package.manifest.batch_dynamic else 1)
    for _ in range(streams):
        engine.infer(feeds)


def _compile_each(
    package: ModelPackage, candidates: list[Candidate], precision: Precision, root: Path, options: EngineOptions
) -> tuple[dict[str, tuple[Engine, bool]], dict[str, PrecisionChoice]]:
    """Compile every candidate at the precision its plan allows, measured where AUTO considers a reduced one.

    A candidate whose backend cannot take the model (OpenVINO has no scikit-learn
    operators, say) drops out of the contest instead of failing the load, as long
    as another one compiles.
    """
    compiled: dict[str, tuple[Engine, bool]] = {}
    choices: dict[str, PrecisionChoice] = {}
    failures: list[BackendUnavailable] = []
    reference: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
    for candidate in candidates:
        planned = plan(candidate.backend, candidate.device, precision, package.manifest.precision)
        assert planned is not None  # eligible() keeps only devices with a plan
        try:
            engine, cached = _compile(package, candidate, planned.precision, root, options)
            if planned.fallback is None:
                choices[candidate.label] = PrecisionChoice(precision.value, engine.precision, planned.rule)
            else:
                if reference is None:
                    samples = package_samples(package)
                    reference = (samples, reference_outputs(package, samples)) if samples else ({}, {})
                if reference[0]:
                    choice = verdict(precision, engine.precision, measure(engine, package, *reference))
                else:
                    choice = PrecisionChoice(precision.value, "fp32", NO_SAMPLES.format(considered=engine.precision),
                                             engine.precision)
                if choice.chosen != engine.precision:
                    engine, cached = _compile(package, candidate, planned.fallback, root, options)
                choices[candidate.label] = choice
            compiled[candidate.label] = engine, cached
        except BackendUnavailable as exc:
            failures.append(exc)
    if not compiled:
        raise failures[0]
    return compiled, choices


def _compile(
    package: ModelPackage, candidate: Candidate, precision: Precision, root: Path, options: EngineOptions
) -> tuple[Engine, bool]:
    backend = candidate.backend
    effective = backend.effective_precision(candidate.device, precision) or precision.value
    directory = cache.artifact_dir(
        root, package.content_hash, backend.name, backend.version(), candidate.device.id, effective,
        options.streams, options.threads,
    )
    compiled = backend.compile(package.model_path, candidate.device, precision, directory, options,
                               outputs=[spec.name for spec in package.manifest.outputs])
    cache.describe(directory, package=package.manifest.name, version=package.manifest.version, backend=backend.name,
                   device=candidate.device.id, precision=effective, threads=options.threads, streams=options.streams)
    cache.mark_used(directory)
    return compiled
