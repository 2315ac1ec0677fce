"""The ``edgepose`` command line. Heavy imports live inside the commands so ``--help`` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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

    from edgepose.models.zoo import ZOO, weights_status

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
            weights_status(info.name),
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
    rescore: Annotated[
        Path | None,
        typer.Option(
            help="DEKR, KAPAO: rescoring net to ship (official final_rescore_*_kpt.pth or from fit-rescore; "
            "the accuracy preset rescores)"
        ),
    ] = None,
    calib: Annotated[
        str | None,
        typer.Option(
            help="INT8 calibration data: image folder, video, COCO annotation file, or synthetic[:PROFILE]"
        ),
    ] = None,
    calib_size: Annotated[int, typer.Option(help="calibration images (a seeded sample)", min=1)] = 300,
    calib_seed: Annotated[int, typer.Option(help="seed of the calibration sample", min=0)] = 0,
    calib_method: Annotated[
        str | None,
        typer.Option(
            help="meanminmax (mean of per-image ranges, as NNCF; the default unless the zoo entry "
            "measured another) | minmax | entropy | percentile (ORT Q/DQ); naming one pins it, else "
            "the accuracy gate may try the others"
        ),
    ] = None,
    int8_source: Annotated[
        str, typer.Option(help="openvino INT8: nncf (quantize the IR) | qdq (convert the Q/DQ ONNX)")
    ] = "nncf",
    val: Annotated[
        str | None,
        typer.Option(help="accuracy gate data: synthetic[:PROFILE], a synth folder, or COCO annotations"),
    ] = None,
    val_size: Annotated[int, typer.Option(help="images generated for --val synthetic", min=1)] = 100,
    max_ap_drop: Annotated[
        float | None, typer.Option(help="largest AP loss INT8 may have against FP32 on --val, e.g. 0.01")
    ] = None,
) -> None:
    """Export MODEL to a deployment bundle for --target (parity against torch is checked and recorded)."""
    from edgepose.export.options import ExportOptions, check_options

    opts = ExportOptions(
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
        rescore=rescore,
        calib=calib,
        calib_size=calib_size,
        calib_seed=calib_seed,
        calib_method=calib_method,
        int8_source=int8_source,
        val=val,
        val_size=val_size,
        max_ap_drop=max_ap_drop,
    )
    check_options(opts)  # a flag mistake is refused before torch is even imported
    from edgepose.export.pipeline import export_model

    bundle = export_model(
        opts,
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
    flip: Annotated[
        bool,
        typer.Option(
            "--flip", help="flip test: a second pass on the mirrored image, merged as official (2x inference)"
        ),
    ] = False,
) -> None:
    """Run BUNDLE on SOURCE: write annotated images (or video) and one COCO-style predictions.json."""
    from edgepose.predict import run_predict

    overrides: dict[str, Any] = {"conf": conf} if conf is not None else {}
    if flip:
        overrides["flip"] = True
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
def demo(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    source: Annotated[
        str, typer.Option(help="camera index, /dev/videoN, video file, rtsp:// URL or GStreamer pipeline")
    ] = "0",
    save: Annotated[Path | None, typer.Option(help="write the annotated video (mp4) here")] = None,
    show: Annotated[
        bool, typer.Option("--show/--no-show", help="open a window (off by itself without a display)")
    ] = True,
    json_lines: Annotated[
        Path | None, typer.Option("--json-lines", help="write one JSON object per frame here")
    ] = None,
    max_frames: Annotated[int | None, typer.Option(help="stop after this many frames", min=1)] = None,
    preset: Annotated[str, typer.Option(help="decoder preset: realtime | accuracy")] = "realtime",
    runtime: Annotated[str | None, typer.Option(help="override the bundle's runtime")] = None,
    device: Annotated[str | None, typer.Option(help="runtime device (cpu, cuda, GPU, NPU, ...)")] = None,
    boxes: Annotated[bool, typer.Option("--boxes", help="also draw person boxes")] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU inference threads per stream (default: cores / streams)", min=1)
    ] = None,
    streams: Annotated[
        int | None,
        typer.Option(
            help="parallel inference streams (default: 2 on 2+ cores), each with --threads threads "
            "(then by default cores / streams)",
            min=1,
        ),
    ] = None,
) -> None:
    """Live pose demo: capture, pre-process, inference and post-process in parallel threads."""
    from edgepose.demo.run import run_demo

    summary = run_demo(
        bundle,
        source,
        save=save,
        show=show,
        json_lines=json_lines,
        max_frames=max_frames,
        preset=preset,
        runtime=runtime,
        device=device,
        draw_boxes=boxes,
        threads=threads,
        log=_log,
        streams=streams,
    )
    stages = "  ".join(f"{k} {v:.1f}" for k, v in summary["stage_ms"].items())
    end = " (interrupted)" if summary["interrupted"] else ""
    typer.echo(
        f"{summary['frames']} frame(s) at {summary['fps']:.1f} FPS, {summary['dropped']} dropped{end}; "
        f"median ms: {stages}"
    )
    for out in summary["outputs"]:
        typer.echo(out)


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
    flip: Annotated[
        bool,
        typer.Option(
            "--flip", help="flip test: a second pass on the mirrored image, merged as official (2x inference)"
        ),
    ] = False,
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
            bundle,
            annotations,
            images,
            preset=preset,
            runtime=runtime,
            device=device,
            progress=True,
            overrides={"flip": True} if flip else None,
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
def train(
    model: Annotated[str, typer.Argument(help="zoo name (random init) or a checkpoint to fine-tune")],
    data: Annotated[str, typer.Option(help="'synthetic' or a folder of COCO keypoint data")] = "synthetic",
    epochs: Annotated[int, typer.Option(help="epochs")] = 100,
    imgsz: Annotated[str, typer.Option(help="training input size N or WxH")] = "384",
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="run folder (last.pt, best.pt, state.pt)")
    ] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --output exactly")] = False,
    skeleton: Annotated[str, typer.Option(help="coco-17 | crowdpose-14 | skeleton.json")] = "coco-17",
    arch: Annotated[
        str | None, typer.Option(help="zoo architecture of a plain state-dict checkpoint")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="initial learning rate (default: the optimizer's)")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw | sgd")] = "adamw",
    images_per_epoch: Annotated[int, typer.Option(help="synthetic images per epoch")] = 2000,
    val_images: Annotated[int, typer.Option(help="held-out synthetic images for the per-epoch AP")] = 100,
    eval_every: Annotated[int, typer.Option(help="validate every N epochs (0: never)")] = 0,
    mosaic: Annotated[float, typer.Option(help="probability of 4-image mosaic augmentation")] = 0.0,
    workers: Annotated[int, typer.Option(help="data-loading worker processes")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    amp: Annotated[
        str,
        typer.Option(
            help="mixed precision: auto (bf16 where the CPU or GPU computes it natively), bf16, or off"
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="seed for initialisation, data order and augmentation")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (a resumed run may change it)")] = "cpu",
) -> None:
    """Train or fine-tune a KAPAO, DEKR or SAHR model (resumable; the EMA weights are what is saved)."""
    from edgepose.training.trainer import train as run_training

    best = run_training(
        model,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        output=output,
        resume=resume,
        skeleton=skeleton,
        arch=arch,
        lr=lr,
        optimizer=optimizer,
        images_per_epoch=images_per_epoch,
        val_images=val_images,
        eval_every=eval_every,
        mosaic=mosaic,
        workers=workers,
        threads=threads,
        amp=amp,
        seed=seed,
        device=device,
        command="edgepose " + " ".join(sys.argv[1:]),
    )
    typer.echo(str(best))


@app.command("fit-rescore")
def fit_rescore(
    bundle: Annotated[Path, typer.Argument(help="DEKR or KAPAO bundle whose poses the net will rescore")],
    annotations: Annotated[Path, typer.Option(help="COCO keypoints annotation file (not your test set)")],
    images: Annotated[Path, typer.Option(help="folder with the annotated images")],
    output: Annotated[Path, typer.Option("--output", "-o", help="rescoring net to write (.pth)")],
    epochs: Annotated[int, typer.Option(help="passes over the poses (official: 20)", min=1)] = 20,
    lr: Annotated[float, typer.Option(help="Adam learning rate (official: 0.001)")] = 1e-3,
    batch: Annotated[int, typer.Option(help="poses per step (official: 1024)", min=1)] = 1024,
    seed: Annotated[int, typer.Option(help="seed for initialisation and shuffling")] = 0,
    runtime: Annotated[str | None, typer.Option(help="override the bundle's runtime")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --output")] = False,
) -> None:
    """Fit a rescoring net to BUNDLE's own poses on annotated images; ship it with `export --rescore`."""
    from edgepose.errors import UsageError

    if output.exists() and not overwrite:
        raise UsageError(f"{output} already exists; choose another --output or pass --overwrite")
    from edgepose.training.rescore import collect_rescore_data, fit_rescore_net, save_rescore_net

    data = collect_rescore_data(bundle, annotations, images, runtime=runtime, progress=True)
    _log(f"{len(data)} poses on {data.images} images; mean target OKS {data.targets.mean():.3f}")
    fit = fit_rescore_net(data, epochs=epochs, lr=lr, batch=batch, seed=seed)
    _log(
        f"mean squared error {fit.epoch_mse[-1]:.4f} after {epochs} epochs "
        f"(predicting the mean OKS for every pose: {fit.baseline_mse:.4f})"
    )
    typer.echo(str(save_rescore_net(fit, output)))


@app.command()
def compare(
    bundle_a: Annotated[Path, typer.Argument(help="first bundle folder (the reference by default)")],
    bundle_b: Annotated[Path, typer.Argument(help="second bundle folder (same skeleton)")],
    images: Annotated[Path, typer.Option(help="folder of images, an image, or a video")],
    preset: Annotated[str, typer.Option(help="decoder preset: accuracy | realtime")] = "accuracy",
    reference: Annotated[str, typer.Option(help="whose poses count as the truth: a | b")] = "a",
    runtime_a: Annotated[str | None, typer.Option(help="override BUNDLE_A's runtime")] = None,
    runtime_b: Annotated[str | None, typer.Option(help="override BUNDLE_B's runtime")] = None,
    max_images: Annotated[int | None, typer.Option(help="compare on the first N images only", min=1)] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the figures to this JSON file")
    ] = None,
    max_keypoint_px: Annotated[
        float | None, typer.Option(help="exit 1 when a matched keypoint moves further than this (pixels)")
    ] = None,
    min_oks: Annotated[float | None, typer.Option(help="exit 1 when the mean OKS is below this")] = None,
) -> None:
    """Pose-level agreement of BUNDLE_A and BUNDLE_B on the same images (runtimes, precisions, sizes)."""
    from rich.console import Console
    from rich.table import Table

    from edgepose.compare import check_thresholds, compare_bundles, worst_images

    result = compare_bundles(
        bundle_a,
        bundle_b,
        images,
        preset=preset,
        reference=reference,
        runtime_a=runtime_a,
        runtime_b=runtime_b,
        max_images=max_images,
        progress=True,
    )
    s, a, b = result["summary"], result["bundle_a"], result["bundle_b"]

    def fmt(v: float | None, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    table = Table(title=f"compare ({result['preset']} preset, reference {reference.upper()})")
    table.add_column("")
    table.add_column("A")
    table.add_column("B")
    for key in ("name", "target", "precision", "runtime"):
        table.add_row(key, str(a[key]), str(b[key]))
    table.add_row("input", "x".join(map(str, a["input_size"])), "x".join(map(str, b["input_size"])))
    table.add_row("poses", str(s["poses_a"]), str(s["poses_b"]))
    table.add_row("unmatched", str(s["unmatched_a"]), str(s["unmatched_b"]))
    figures = Table(title=f"agreement over {s['images']} image(s), {s['matched']} matched pose(s)")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for label, value in (
        ("match rate", f"{s['match_rate']:.4f}"),
        ("OKS mean / min", f"{fmt(s['mean_oks'])} / {fmt(s['min_oks'])}"),
        (
            "keypoint px mean / p95 / max",
            "{} / {} / {}".format(
                *(fmt(s[k], ".2f") for k in ("mean_keypoint_px", "p95_keypoint_px", "max_keypoint_px"))
            ),
        ),
        ("score drift (B - A)", fmt(s["mean_score_drift"], "+.4f")),
        ("max score difference", fmt(s["max_score_diff"])),
    ):
        figures.add_row(label, value)
    worst = Table(title="worst images by mean OKS")
    for col in ("image", "poses A", "poses B", "matched", "OKS mean", "px max"):
        worst.add_column(col)
    for r in worst_images(result, 5):
        worst.add_row(
            r["image"],
            str(r["poses_a"]),
            str(r["poses_b"]),
            str(r["matched"]),
            fmt(r["mean_oks"]),
            fmt(r["max_keypoint_px"], ".2f"),
        )
    console = Console()
    console.print(table)
    console.print(figures)
    if worst.row_count:
        console.print(worst)
    if json_out is not None:
        from edgepose.bundle import write_json_atomic

        write_json_atomic(json_out, result)
    failed = check_thresholds(s, max_keypoint_px=max_keypoint_px, min_oks=min_oks)
    if failed:
        print(f"agreement check failed: {failed}", file=sys.stderr)
        raise typer.Exit(1)


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


@app.command()
def bench(
    bundles: Annotated[
        list[Path], typer.Argument(metavar="BUNDLE", help="bundle folder(s); several are interleaved")
    ],
    warmup: Annotated[int, typer.Option(help="untimed iterations after the first frame")] = 10,
    iters: Annotated[int | None, typer.Option(help="timed iterations per bundle (default 100)")] = None,
    seconds: Annotated[float | None, typer.Option(help="time for this long instead of --iters")] = None,
    batch: Annotated[int, typer.Option(help="frames per inference (the bundle must take that batch)")] = 1,
    throughput: Annotated[
        bool, typer.Option("--throughput", help="several requests in flight (OpenVINO async queue)")
    ] = False,
    requests: Annotated[int, typer.Option(help="requests in flight with --throughput (0: device's)")] = 0,
    runtime: Annotated[str | None, typer.Option(help="override the bundles' runtime")] = None,
    device: Annotated[str | None, typer.Option(help="runtime device (cpu, cuda, GPU, NPU, ...)")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the run records to this file")
    ] = None,
    db: Annotated[Path | None, typer.Option(help="append the runs to this SQLite benchmark history")] = None,
    images: Annotated[Path | None, typer.Option(help="folder of images to cycle (default: samples)")] = None,
    preset: Annotated[str, typer.Option(help="decoder preset: realtime | accuracy")] = "realtime",
    block: Annotated[
        int, typer.Option(help="latency mode: frames each bundle runs before the next (1: alternate)")
    ] = 1,
) -> None:
    """Latency per stage (pre-processing, inference, post-processing) of each BUNDLE on this machine."""
    from rich.console import Console
    from rich.progress import Progress

    from edgepose.bench.runner import BenchOptions, run_bench

    if db is not None:
        from edgepose.bench.history import check_db

        check_db(db)  # before measuring: a bad --db should cost no time
    if iters is None and seconds is None:
        iters = 100
    opts = BenchOptions(
        bundles=list(bundles),
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        batch=batch,
        throughput=throughput,
        requests=requests,
        runtime=runtime,
        device=device,
        images=images,
        preset=preset,
        block=block,
    )
    console = _console()
    with Progress(transient=True, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("benchmarking", total=iters)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        runs = run_bench(opts, progress=progress, log=lambda m: console.print(f"[yellow]{m}[/yellow]"))
    from edgepose.bench.report import stage_table, summary_table

    out = Console()
    out.print(stage_table(runs))
    out.print(summary_table(runs))
    if json_out is not None:
        from edgepose.bundle import write_json_atomic

        write_json_atomic(json_out, {"runs": runs})
    if db is not None:
        from edgepose.bench.history import append_runs

        ids = append_runs(db, runs)
        _log(f"appended run(s) {', '.join(map(str, ids))} to {db}")


@app.command()
def report(
    db: Annotated[Path, typer.Option(help="SQLite benchmark history written by `edgepose bench --db`")],
    plot: Annotated[Path | None, typer.Option(help="write a PNG: stacked stage latency per run")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write a markdown table and device summary")] = None,
    last: Annotated[int | None, typer.Option(help="only the N most recent runs")] = None,
    model: Annotated[str | None, typer.Option(help="only runs of this model")] = None,
) -> None:
    """Compare benchmark runs across devices, runtimes and precisions."""
    from rich.console import Console

    from edgepose.bench.history import read_runs
    from edgepose.bench.report import history_table, plot_runs
    from edgepose.bench.report import markdown as to_markdown
    from edgepose.errors import DataError

    runs = read_runs(db, last=last, model=model)
    if not runs:
        which = f" of model {model}" if model else ""
        raise DataError(f"{db} has no benchmark runs{which}; record some with `edgepose bench ... --db {db}`")
    Console().print(history_table(runs))
    if plot is not None:
        plot_runs(runs, plot)
        _log(f"plot -> {plot}")
    if markdown is not None:
        from edgepose.errors import UsageError

        try:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(to_markdown(runs), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {markdown}: {e.strerror or e}") from e
        _log(f"markdown -> {markdown}")


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
