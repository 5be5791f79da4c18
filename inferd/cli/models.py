"""The commands on one model: convert, info, compile, optimize, predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from inferd.cli import render
from inferd.cli.options import BackendOpt, ComputeUnitsOpt, PackageArg, PrecisionOpt, package_path
from inferd.cli.render import console, out
from inferd.errors import InferdError, validation_summary
from inferd.types import ComputeUnit, Precision


def convert(
    source: Annotated[Path, typer.Argument(
        help="model to convert: .onnx, SavedModel directory, .keras, .h5, .tflite, TorchScript .pt/.pth, "
             "scikit-learn .pkl/.joblib (with --allow-pickle)", exists=True)],
    output: Annotated[Path, typer.Option("--output", "-o", help="package directory to write")],
    image: Annotated[bool, typer.Option("--image", help="the model's 4-D float input is an image")] = False,
    image_input: Annotated[str | None, typer.Option(help="which input is the image, when the model has several")] = None,
    scale: Annotated[list[float] | None, typer.Option(
        help="tensor = pixel * scale + bias, pixels 0..255; once, or once per channel")] = None,
    bias: Annotated[list[float] | None, typer.Option(help="added after scaling; once, or once per channel")] = None,
    color_layout: Annotated[str, typer.Option(help="RGB, BGR or GRAY")] = "RGB",
    channel_layout: Annotated[str | None, typer.Option(help="NCHW or NHWC (default: from the shape, else the "
                                                              "framework's: NHWC for TensorFlow)")] = None,
    resize: Annotated[str, typer.Option(help="center_crop or stretch")] = "center_crop",
    input_shape: Annotated[str | None, typer.Option(
        help="input shape with batch, e.g. 1,3,224,224: required for TorchScript, fixes open sizes otherwise")] = None,
    labels: Annotated[Path | None, typer.Option(help="class names: one per line, or a JSON list",
                                                exists=True, dir_okay=False)] = None,
    activation: Annotated[str | None, typer.Option(
        help="what turns the classifier's scores into probabilities: softmax, sigmoid, or none when the model "
             "already outputs them (default: detected)")] = None,
    name: Annotated[str | None, typer.Option(
        help="package name (default: OUTPUT's directory name, the name a server serves it under)")] = None,
    version: Annotated[str | None, typer.Option("--version", help="package version")] = None,
    author: Annotated[str | None, typer.Option()] = None,
    license_: Annotated[str | None, typer.Option("--license")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    opset: Annotated[int | None, typer.Option(help="target ONNX opset (ONNX and TensorFlow sources)")] = None,
    signature: Annotated[str, typer.Option(help="SavedModel signature")] = "serving_default",
    simplify: Annotated[bool, typer.Option(help="simplify the graph with onnxslim")] = True,
    tolerance: Annotated[float, typer.Option(help="largest max abs difference from the source accepted")] = 1e-3,
    allow_fidelity_loss: Annotated[bool, typer.Option(help="keep a package that drifts from its source")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="unpickle a scikit-learn file (runs code from it)")] = False,
    samples: Annotated[Path | None, typer.Option(
        help="typical inputs to keep in the package (.npz keyed by input name, rows first): --precision auto "
             "measures reduced precisions on them; image models get photographs without it",
        exists=True, dir_okay=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="replace OUTPUT if it exists")] = False,
) -> None:
    """Convert a model file into a package, checking its outputs against the source framework's."""
    from pydantic import ValidationError

    from inferd.convert import ConvertOptions, ImagePreprocessing, convert_any, served_name
    from inferd.runtime.check import save_checked

    image_flags = {"--image-input": image_input, "--scale": scale, "--bias": bias,
                   "--channel-layout": channel_layout}
    given = [flag for flag, value in image_flags.items() if value]
    if given and not image:
        raise InferdError(f"{', '.join(given)} {'describe' if len(given) > 1 else 'describes'} an image input: add --image")
    if output.exists() and not force:
        raise InferdError(f"{output} already exists; pass --force to replace it")
    metadata = {key: value for key, value in (("name", name or served_name(output)), ("version", version),
                                              ("author", author), ("license", license_), ("description", description))
                if value}
    try:
        options = ConvertOptions(
            image=ImagePreprocessing(
                input=image_input, scale=tuple(scale) if scale and len(scale) > 1 else (scale[0] if scale else 1.0),
                bias=tuple(bias or (0.0,)), color_layout=color_layout, channel_layout=channel_layout, resize=resize,
            ) if image else None,
            input_shape=_parse_shape(input_shape) if input_shape else None,
            labels=tuple(_read_labels(labels)) if labels else None, activation=activation,
            metadata=metadata, opset=opset, signature=signature, simplify=simplify, tolerance=tolerance,
            allow_fidelity_loss=allow_fidelity_loss, allow_pickle=allow_pickle,
            samples=str(samples.resolve()) if samples else None,
        )
    except ValidationError as exc:
        raise InferdError(validation_summary(exc)) from None
    with console.status(f"converting {source}") as status:
        package = convert_any(source, options, progress=lambda step: status.update(f"{source.name}: {step}"))
        status.update(f"writing {output} and loading it on every backend")
        package = save_checked(package, output, overwrite=force)
    render.converted(package, output)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InferdError(f"cannot read the shape {text!r}; write it as 1,3,224,224") from None


def _read_labels(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise InferdError(f"{path} is not valid JSON ({exc}); give a JSON list of names") from None
        if not isinstance(labels, list) or not all(isinstance(label, (str, int)) for label in labels):
            raise InferdError(f"{path} must hold a JSON list of class names")
        names = [str(label) for label in labels]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise InferdError(f"{path} holds no labels; write one class name per line")
    return names


def info(package: PackageArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Describe a package: inputs, outputs, preprocessing, labels, precision, size and fidelity."""
    from inferd.package import ModelPackage
    from inferd.runtime.precision import typed_execution_rule

    pkg = ModelPackage.load(package_path(package))
    if as_json:
        out.print_json(pkg.manifest.model_dump_json(exclude={"files"}))
        return
    render.package_info(pkg, typed_execution_rule(pkg.manifest.precision))


def compile_(
    package: PackageArg,
    compute_units: ComputeUnitsOpt = ComputeUnit.ALL,
    precision: PrecisionOpt = Precision.AUTO,
    backend: BackendOpt = "auto",
) -> None:
    """Compile for this machine, filling the cache; prints the first and the cached load times."""
    from inferd.runtime import load

    package = package_path(package)
    first = load(package, compute_units=compute_units, precision=precision, backend=backend)
    second = load(package, compute_units=compute_units, precision=precision, backend=backend)
    render.compiled(first, second)


def optimize(
    package: PackageArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="directory for the compressed package")],
    pipeline: Annotated[str, typer.Option(
        "--pipeline", "-s", help="steps applied in order, e.g. 'int8' or 'prune:0.5,palettize:4' "
        "(fp16, int8, int8-weights, palettize:BITS[:GROUP], prune:SPARSITY, prune:N:M)")],
    calibration: Annotated[Path | None, typer.Option(
        help="calibration data for int8 and palettization: a folder of images or an .npz keyed by input name "
        "(default: sample photos for an image model)")] = None,
    method: Annotated[str, typer.Option(
        help="int8 activation ranges: percentile (99.99% of each activation's values), minmax or entropy (KL)")] = "percentile",
    max_drop: Annotated[float | None, typer.Option(
        help="accuracy budget in points of top-1 (accuracy with labels, else agreement); "
        "sensitive layers stay at full precision until it holds")] = None,
    eval_data: Annotated[Path | None, typer.Option(
        help="evaluation data: a folder per class, or an .npz (inputs + optional 'labels'); "
        "default: crops, flips and colour jitter of sample photos")] = None,
    eval_samples: Annotated[int | None, typer.Option(
        min=16, help="size of the generated evaluation set (default: 500 for --report or --max-drop, else 32 for "
        "the floor; fewer for inputs larger than 224x224, so each costs about the same)")] = None,
    report: Annotated[bool, typer.Option("--report", help="measure size, latency and fidelity of every step")] = False,
    report_json: Annotated[Path | None, typer.Option("--report-json", help="also write the report as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="draw the report (size vs fidelity vs latency per step) to this PNG, with an HTML page beside it")] = None,
    backends: Annotated[list[str], typer.Option("--backend", "-b", help="backends the report times")] = [  # noqa: B006
        "onnxruntime", "openvino"],
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
    force_unusable: Annotated[bool, typer.Option(
        "--force-unusable", help="write the package even when it falls below the floor (see README)")] = False,
) -> None:
    """Compress a package (fp16, int8, palettization, pruning) and report what it cost in accuracy and gained in size.

    The result is measured against the original first; a package below the floor (a destroyed model) is not
    written unless --force-unusable."""
    from rich.panel import Panel

    from inferd import optimize as opt
    from inferd.bench.compression import render as render_report
    from inferd.bench.compression import report as compression_report
    from inferd.bench.compression import report_json as compression_report_json
    from inferd.optimize.evalset import default_eval_set
    from inferd.optimize.floor import FLOOR, judge
    from inferd.package import ModelPackage
    from inferd.runtime.check import save_checked

    if output.exists() and not force:
        raise InferdError(f"{output} already exists; pass --force to replace it or choose another --output")
    steps = opt.parse(pipeline)  # reject a bad pipeline before loading anything
    if plot:
        from inferd.bench.plotting import check_target

        check_target(plot)
    original = ModelPackage.load(package_path(package))
    wants_report = report or report_json is not None or plot is not None
    results = []
    with render.progress() as bar, opt.reporting(render.listener(bar)):
        eval_set = default_eval_set(original.manifest, eval_data, eval_samples,
                                    thorough=wants_report or max_drop is not None)
        compressing = bar.add_task(f"compressing {original.manifest.name}: {pipeline}", total=len(steps))
        for step, result in opt.compress_each(original, pipeline, calibration=calibration, method=method,  # type: ignore[arg-type]
                                              max_drop=max_drop, eval_data=eval_set):
            kept = result.manifest.compression[-1].details.get("accuracy_guard", {}).get("kept", [])
            note = f" (kept at full precision, {len(kept)}: {', '.join(kept)})" if kept else ""
            console.print(f"[green]done:[/green] {step}{note}")
            results.append(result)
            bar.advance(compressing)
        verdict = judge(original, results[-1], eval_set)
    if verdict.unmeasured:
        console.print(f"[yellow]warning: the floor was not checked[/yellow]: {verdict.unmeasured}", soft_wrap=True)
    if verdict.below:
        console.print(Panel("\n".join(verdict.below) + f"\n\nfloor: {FLOOR.describe()}", border_style="red",
                            title=f"{pipeline} destroys {original.manifest.name} (on {eval_set.description})"))
    refused = bool(verdict.below) and not force_unusable
    if not refused:
        with console.status(f"writing {output} and loading it on every backend"):
            results[-1] = save_checked(results[-1], output, overwrite=force)
        console.print(f"[green]wrote[/green] {output} ({results[-1].size_bytes() / 1e6:.2f} MB, "
                      f"from {original.size_bytes() / 1e6:.2f} MB)")
    if wants_report:  # also for a refused package: the report shows what it would have cost
        with render.progress() as bar, opt.reporting(render.listener(bar)):
            result_report = compression_report(original, results, verdict.reference or eval_set, backends=backends)
        out.print(render_report(result_report))
        if report_json:
            report_json.parent.mkdir(parents=True, exist_ok=True)
            report_json.write_text(compression_report_json(result_report))
            console.print(f"wrote {report_json}")
        if plot:
            from inferd.bench.plot_compression import write_plot

            console.print(f"wrote {plot} and {write_plot(result_report, plot)}", soft_wrap=True)
    if refused:
        raise InferdError(f"nothing written to {output}: the compressed model is below the floor; choose a milder "
                          "compression (--max-drop keeps the layers it hurts most), or pass --force-unusable to "
                          "write it anyway")


def predict(
    package: PackageArg,
    images: Annotated[list[Path], typer.Argument(help="image files", exists=True, dir_okay=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per image")] = False,
    compute_units: ComputeUnitsOpt = ComputeUnit.ALL,
    precision: PrecisionOpt = Precision.AUTO,
    backend: BackendOpt = "auto",
) -> None:
    """Classify images with a package."""
    from inferd.io import image_input, preprocess_image
    from inferd.io import top_k as rank
    from inferd.runtime import load

    source = package
    package = package_path(package)
    model = load(package, compute_units=compute_units, precision=precision, backend=backend)
    spec = image_input(model.manifest, hint=None if source == package else
                       f"convert it with `inferd convert {source} -o PACKAGE --image --scale ...` to declare its image input")
    classifier = model.manifest.classifier
    if classifier is None:
        raise InferdError(f"{package} is not a classifier; `inferd predict` ranks labels")
    with render.progress() as progress:
        task = progress.add_task("classifying", total=len(images), visible=len(images) > 1)
        for path in images:
            scores = model.predict({spec.name: preprocess_image(path, spec)})[classifier.output]
            (ranked,) = rank(scores, classifier.labels, top_k, activation=classifier.activation)
            if as_json:
                out.print_json(json.dumps({"file": str(path), "predictions": [p.as_dict() for p in ranked]}), indent=None)
            else:
                out.print(f"[bold]{path}[/bold]")
                for p in ranked:
                    out.print(f"  {p.probability:7.2%}  {p.label}")
            progress.advance(task)
