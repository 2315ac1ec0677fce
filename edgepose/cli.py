"""The ``edgepose`` command line. Heavy imports live inside the commands so ``--help`` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgepose.errors import EdgeposeError

app = typer.Typer(
    help="Multi-person pose estimation on edge hardware: export, quantize, run and benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _log(msg: str) -> None:
    _console().print(f"[dim]{msg}[/dim]")


@app.command()
def models() -> None:
    """List the model zoo: name, family, keypoints, default input, params, GFLOPs, weights."""
    from rich.console import Console
    from rich.table import Table

    from edgepose.models.zoo import ZOO

    table = Table(title="edgepose model zoo")
    for col in ("name", "family", "keypoints", "default input", "params (M)", "GFLOPs", "weights"):
        table.add_column(col)
    for info in ZOO.values():
        w, h = info.default_imgsz
        table.add_row(
            info.name,
            info.family,
            str(info.num_keypoints),
            f"{w}x{h}",
            f"{info.params / 1e6:.2f}",
            f"{info.gflops:.1f}",
            info.weights,
        )
    Console().print(table)


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="zoo name (see `edgepose models`) or a checkpoint path")],
    target: Annotated[str, typer.Option(help="cpu | openvino | jetson")] = "cpu",
    weights: Annotated[
        Path | None, typer.Option(help="checkpoint to load (official or edgepose format)")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="zoo architecture of a plain state-dict checkpoint")
    ] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="seeded random weights, for latency work")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed for --random-weights")] = 0,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8")] = "fp32",
    imgsz: Annotated[str | None, typer.Option(help="input size N or WxH, e.g. 640 or 640x384")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="bundle folder to write")] = None,
    skeleton: Annotated[str | None, typer.Option(help="coco-17 | crowdpose-14 | skeleton.json")] = None,
    simplify: Annotated[bool, typer.Option(help="simplify the ONNX graph with onnxslim")] = True,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle folder")] = False,
    dynamic: Annotated[bool, typer.Option(help="variable input size (openvino; static is faster)")] = False,
) -> None:
    """Export MODEL to a deployment bundle for --target (parity against torch is checked and recorded)."""
    from edgepose.export.pipeline import ExportOptions, export_model

    bundle = export_model(
        ExportOptions(
            model=model,
            target=target,
            weights=weights,
            arch=arch,
            random_weights=random_weights,
            seed=seed,
            precision=precision,
            imgsz=imgsz,
            output=output,
            skeleton=skeleton,
            simplify=simplify,
            overwrite=overwrite,
            dynamic=dynamic,
        ),
        log=_log,
    )
    typer.echo(str(bundle.path))


@app.command()
def build(
    bundle: Annotated[Path, typer.Argument(help="bundle exported with --target jetson")],
    precision: Annotated[str | None, typer.Option(help="fp32 | fp16 | int8 (default: the bundle's)")] = None,
    workspace: Annotated[int, typer.Option(help="builder workspace in MiB")] = 1024,
    dla_core: Annotated[int | None, typer.Option(help="build for this DLA core (GPU fallback on)")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache file to reuse")] = None,
) -> None:
    """On the Jetson: build a TensorRT plan for this GPU and TensorRT version and add it to BUNDLE."""
    from edgepose.export.onnx2tensorrt import build_bundle_plan

    out = build_bundle_plan(
        bundle,
        precision=precision,
        workspace_mib=workspace,
        dla_core=dla_core,
        timing_cache=timing_cache,
        log=_log,
    )
    typer.echo(str(out.path))


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    source: Annotated[Path, typer.Argument(help="image, folder of images, or video file")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="folder for annotated images and predictions.json")
    ] = Path("edgepose-out"),
    preset: Annotated[str, typer.Option(help="decoder preset: realtime | accuracy")] = "realtime",
    runtime: Annotated[str | None, typer.Option(help="override the bundle's runtime")] = None,
    device: Annotated[str | None, typer.Option(help="runtime device (cpu, cuda, GPU, NPU, ...)")] = None,
    boxes: Annotated[bool, typer.Option("--boxes", help="also draw person boxes")] = False,
    conf: Annotated[
        float | None, typer.Option(help="override the preset's person confidence threshold")
    ] = None,
) -> None:
    """Run BUNDLE on SOURCE: write annotated images (or video) and one COCO-style predictions.json."""
    from edgepose.predict import run_predict

    overrides = {"conf": conf} if conf is not None else {}
    summary = run_predict(
        bundle,
        source,
        output,
        preset=preset,
        runtime=runtime,
        device=device,
        draw_boxes=boxes,
        overrides=overrides,
        log=_log,
    )
    typer.echo(f"{summary['images']} image(s), {summary['poses']} pose(s) -> {summary['output']}")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="folder to create (images/, annotations.json, video.mp4)")],
    images: Annotated[int, typer.Option(help="number of images")] = 200,
    seed: Annotated[int, typer.Option(help="stream seed: the same seed writes the same files")] = 0,
    profile: Annotated[str, typer.Option(help="frozen data profile: val-v1 | train-v1")] = "val-v1",
    video: Annotated[float, typer.Option(help="also write video.mp4 of this many seconds (30 fps)")] = 0.0,
) -> None:
    """Generate synthetic people with COCO keypoint annotations (and optionally a video)."""
    from rich.progress import Progress

    from edgepose.data.synthetic import generate_dataset

    console = _console()
    with Progress(transient=True, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("synthesising", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        path = generate_dataset(out, images, seed, profile, video_seconds=video, progress=progress)
    typer.echo(str(path))


@app.command("eval")
def evaluate(
    annotations: Annotated[Path, typer.Option(help="COCO keypoints annotation file")],
    bundle: Annotated[Path | None, typer.Argument(help="bundle folder (or give --results)")] = None,
    images: Annotated[
        Path | None, typer.Option(help="folder with the annotated images (with a bundle)")
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(help="score this results file / predictions.json instead of running a bundle"),
    ] = None,
    skeleton: Annotated[str, typer.Option(help="skeleton of --results (OKS sigmas)")] = "coco-17",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the figures to this JSON file")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="decoder preset (accuracy is what AP is reported with)")
    ] = "accuracy",
    runtime: Annotated[str | None, typer.Option(help="override the bundle's runtime")] = None,
    device: Annotated[str | None, typer.Option(help="runtime device")] = None,
) -> None:
    """OKS AP (pycocotools) of BUNDLE on COCO keypoint data, or of an existing --results file."""
    from edgepose.errors import UsageError

    if (bundle is None) == (results is None):
        raise UsageError("give either a BUNDLE (with --images) or --results FILE, not both or neither")
    if bundle is not None:
        if images is None:
            raise UsageError("evaluating a bundle needs --images DIR, the folder the annotations describe")
        from edgepose.evaluation import run_bundle_eval

        figures = run_bundle_eval(
            bundle, annotations, images, preset=preset, runtime=runtime, device=device, progress=True
        )
        title = str(bundle)
    else:
        from edgepose.data.coco import load_keypoint_annotations
        from edgepose.evaluation import evaluate_results, load_results
        from edgepose.skeletons import get_skeleton

        sk = get_skeleton(skeleton)
        data = load_keypoint_annotations(annotations, num_keypoints=sk.num_keypoints)
        metrics = evaluate_results(data, load_results(results, data), sk.sigmas_array)
        figures = {"metrics": metrics, **metrics, "results": str(results), "annotations": str(annotations)}
        title = str(results)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"OKS keypoint AP: {title}")
    for key in figures["metrics"]:
        table.add_column(key)
    table.add_row(*(f"{v:.4f}" for v in figures["metrics"].values()))
    Console().print(table)
    if json_out is not None:
        from edgepose.bundle import write_json_atomic

        write_json_atomic(json_out, figures)


@app.command()
def doctor() -> None:
    """Which runtimes, devices and accelerators this machine has."""
    from rich.console import Console
    from rich.table import Table

    from edgepose.doctor import collect

    report = collect()
    table = Table(title="edgepose doctor", show_header=True)
    table.add_column("component")
    table.add_column("status")
    for name, status in report:
        table.add_row(name, status)
    Console().print(table)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit code."""
    try:
        app()
    except EdgeposeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
