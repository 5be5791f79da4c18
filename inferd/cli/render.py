"""What the `inferd` commands print: the consoles, progress bars and tables; the commands compute, this shows."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from inferd.bench.engine import EngineReport
    from inferd.export.coreml import CoreMLExport
    from inferd.package import ModelPackage
    from inferd.runtime.compiled import CompiledModel
    from inferd.runtime.devices import Device

console = Console(stderr=True)
# Piped output (a file, grep) is not a terminal: rich's 80 columns would cut table cells short there.
out = Console(width=None if sys.stdout.isatty() else 200)


def human_bytes(value: float) -> str:
    """A size in the binary unit that keeps it under 1024 (GiB at most), as `inferd top` and `inferd cache` show it."""
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def error(message: str) -> None:
    console.print(Text("error: ", style="red") + Text(message), soft_wrap=True)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"), console=console, transient=True)


def listener(bar: Progress) -> Callable[[int, str, int, int], None]:
    """Shows the progress `inferd.optimize` reports as bars that go away when their work is done."""
    tasks: dict[int, TaskID] = {}

    def listen(key: int, description: str, done: int, total: int) -> None:
        if key not in tasks:
            tasks[key] = bar.add_task(description, total=total)
        bar.update(tasks[key], completed=done)
        if done >= total:
            bar.remove_task(tasks.pop(key))

    return listen


def key_values(title: str, rows: dict[str, str]) -> None:
    """A two-column table without a header: a package's or an export's facts."""
    table = Table(show_header=False, title=title)
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


def devices(found: list[Device]) -> None:
    table = Table(title="compute devices")
    for column in ("backend", "device", "kind", "name", "precisions", "instruction sets"):
        table.add_column(column)
    for d in found:
        table.add_row(d.backend, d.id, d.kind, d.name, " ".join(d.precisions), " ".join(d.features))
    out.print(table)


def converted(package: ModelPackage, output: object) -> None:
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


def package_info(pkg: ModelPackage, precision_rule: str) -> None:
    m = pkg.manifest
    rows = {
        "description": m.description, "author": m.author, "license": m.license,
        "source": f"{m.source.framework} {m.source.framework_version or ''}",
        "format": f"ONNX (opset {max(o.version for o in pkg.onnx_model.opset_import if o.domain in ('', 'ai.onnx'))})",
        "precision": f"{m.precision}: {precision_rule}",
        "samples": (f"{len(next(iter(samples.values())))} typical input rows kept for precision checks"
                    if (samples := pkg.samples()) else "none kept: auto precision stays fp32 (an image model is "
                    "measured on photographs)"),
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
    key_values(f"{m.name} {m.version}", rows)


def compiled(first: CompiledModel, second: CompiledModel) -> None:
    table = Table(title=f"{first.name} on {first.load_info.backend}:{first.load_info.device} {first.load_info.precision}")
    for column in ("load", "cached", "total s", "compile s"):
        table.add_column(column)
    for label, model in (("first", first), ("second", second)):
        i = model.load_info
        table.add_row(label, str(i.cached), f"{i.seconds:.3f}", f"{i.compile_seconds:.3f}")
    out.print(table)
    choice = first.load_info.precision_choice
    out.print(f"precision {first.load_info.precision} ({choice['requested']} requested): {choice['reason']}", soft_wrap=True)
    for output in choice["outputs"]:
        snr = "exact" if output["snr_db"] is None else f"SNR {output['snr_db']:.1f} dB"
        out.print(f"  {choice['considered']} on {output['output']} ({output['kind']}): {snr}, "
                  f"{'within tolerance' if output['passed'] else 'OUT of tolerance: ' + output['reason']}", soft_wrap=True)
    if first.load_info.selection_ms:
        out.print("backend selection (median ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(first.load_info.selection_ms.items(), key=lambda kv: kv[1])))


def engine_report(report: EngineReport, package: object, batch: int) -> None:
    table = Table(title=f"{package} batch {batch} ({report.machine['cpu']}, {report.machine['cores']} cores)")
    columns = ["configuration", "raw median", "inferd median", "mean", "p95", "p99", "throughput/s"]
    columns += ["GOP/s", "of peak"] if report.peaks else []
    for column in (*columns, ""):
        table.add_column(column)
    for c in sorted(report.configs, key=lambda c: c.inferd.median_ms):
        s = c.inferd
        place = [] if not report.peaks else ["", ""] if c.roofline is None else [
            f"{c.roofline['achieved_gops']:.1f}",
            f"{100 * c.roofline['fraction']:.1f}% of {c.roofline['peak_gops']:.0f}" if c.roofline["fraction"]
            is not None else "no peak"]
        table.add_row(c.name, f"{c.raw.median_ms:.2f} ms", f"{s.median_ms:.2f} ms", f"{s.mean_ms:.2f}",
                      f"{s.p95_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.throughput_per_s:.0f}", *place,
                      "default" if c.is_default else "")
    if report.baseline:
        b = report.baseline
        table.add_row(report.baseline_name or "baseline", "", f"{b.median_ms:.2f} ms", f"{b.mean_ms:.2f}",
                      f"{b.p95_ms:.2f}", f"{b.p99_ms:.2f}", f"{b.throughput_per_s:.0f}",
                      *([""] * (len(columns) - 7)), "baseline")
    out.print(table)
    summary = report.summary()
    out.print(f"default vs best raw backend call: {summary['default_vs_best_raw']:.3f}x")
    if summary.get("speedup_vs_baseline"):
        out.print(f"speed-up over PyTorch eager: {summary['speedup_vs_baseline']:.2f}x")
    if report.peaks and report.operations:
        roofline(report)


def roofline(report: EngineReport) -> None:
    """The operation count, this machine's peaks and where each configuration's raw call stands."""
    assert report.peaks is not None and report.operations is not None
    ops = report.operations
    unknown = f", {len(ops['unknown'])} layers of unknown shape not counted" if ops["unknown"] else ""
    parts = [f"{op} {n / 1e9:.3f}" for op, n in ops["by_op"].items()]
    parts += [f"int8 {ops['int8_macs'] / 1e9:.3f}"] if ops["int8_macs"] else []
    out.print(f"operations: {ops['macs_per_sample'] / 1e9:.3f} GMACs per sample (one batch: {', '.join(parts)}), "
              f"{ops['other_ops'] / 1e9:.3f} G elementwise/pooling ops not counted{unknown}", soft_wrap=True)
    peaks = report.peaks
    out.print(f"instruction sets found: {' '.join(peaks['features']) or 'none reported'}", soft_wrap=True)
    for name, peak in peaks["peaks"].items():
        line = (f"{name}: {peak['all_threads_gops']:.0f} GOP/s on {peaks['threads']} threads, "
                f"{peak['one_thread_gops'] or 0:.0f} on one ({peak['kernel']})" if peak["absent"] is None
                else f"{name}: absent ({peak['absent']})")
        out.print(f"  peak {line}", soft_wrap=True)
    out.print(f"  peaks {'from the cache' if peaks['cached'] else 'measured now'} (--refresh-peak measures again); "
              "achieved = 2 x MACs x batch / raw median", soft_wrap=True)
    for c in sorted(report.configs, key=lambda c: c.raw.median_ms):
        if c.roofline is None:
            continue
        r = c.roofline
        versus = (f"{100 * r['fraction']:.1f}% of the {r['peak_gops']:.0f} GOP/s peak" if r["fraction"] is not None
                  else f"no peak to compare with ({r['note']})")
        out.print(f"  {c.name}: achieved {r['achieved_gops']:.1f} GOP/s, {versus}", soft_wrap=True)


def coreml_export(result: CoreMLExport, package: object) -> None:
    key_values(f"Core ML export of {package}", {
        "written": str(result.path),
        "network from": f"{result.source} (max abs diff vs the package {result.max_abs_diff_vs_package:.1e})",
        "precision / target": f"{result.precision} / {result.minimum_deployment_target}",
        "compression": ", ".join(result.compression) or "none",
        "weights": (f"{result.weights_bytes_uncompressed / 1e6:.2f} MB → {result.weights_bytes / 1e6:.2f} MB "
                    f"({result.compression_ratio:.2f}x smaller)" if result.compression
                    else f"{result.weights_bytes / 1e6:.2f} MB"),
        "package size": f"{result.total_bytes / 1e6:.2f} MB",
    })
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    out.print("Core ML runs it on macOS/iOS; the input's description in Xcode says how to resize and crop pictures.")
