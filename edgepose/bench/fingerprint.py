"""What a benchmark ran on, so that numbers from different machines can be compared honestly.

Built on ``edgepose.sysinfo``; adds what only a loaded runtime knows (its version, the device's full
name), the bundle's model and precision, and how busy the machine was at the start and at the end.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from edgepose import sysinfo
from edgepose.version import __version__

#: a run is flagged busy when the 1-minute load average exceeds this share of the cores
BUSY_LOAD_PER_CORE = 0.5


def git_commit() -> str | None:
    """HEAD of the checkout this package was imported from, or None (installed wheel, no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def load_now() -> float | None:
    load = sysinfo.load_average()
    return None if load is None else round(load[0], 2)


def is_busy(load: float | None, cores: int) -> bool:
    return load is not None and cores > 0 and load > BUSY_LOAD_PER_CORE * cores


def _device_name(runtime: Any) -> str | None:
    """The accelerator's own name: OpenVINO's FULL_DEVICE_NAME, the GPU for TensorRT and CUDA."""
    if runtime.name == "openvino":
        import openvino as ov

        desc = runtime.describe()
        devices = desc.get("execution_devices") or [runtime.device]
        core = ov.Core()
        names = []
        for dev in devices:
            try:
                names.append(str(core.get_property(dev, "FULL_DEVICE_NAME")))
            except RuntimeError:
                names.append(str(dev))
        return ", ".join(dict.fromkeys(names))
    if runtime.name == "tensorrt" or (runtime.name == "onnxruntime" and "cuda" in str(runtime.device)):
        return sysinfo.gpu_name()
    return None


def fingerprint(estimator: Any, load_start: float | None, load_end: float | None) -> dict[str, Any]:
    """One flat-ish dict describing machine, runtime and bundle of a finished run."""
    machine = sysinfo.machine_summary()
    cpu = machine["cpu"]
    runtime = estimator.runtime
    bundle = estimator.bundle
    w, h = bundle.input_size
    jetson = machine["jetson"]
    fp: dict[str, Any] = {
        "cpu": cpu["model"],
        "arch": cpu["arch"],
        "cores": cpu["cores"],
        "isa": cpu["isa"],
        "memory_gib": machine["memory_gib"],
        "os": machine["os"],
        "python": machine["python"],
        "load_start": load_start,
        "load_end": load_end,
        "busy": is_busy(load_start, cpu["cores"]) or is_busy(load_end, cpu["cores"]),
        "runtime": runtime.name,
        "runtime_version": runtime.version(),
        "device": str(runtime.device or "cpu"),
        "device_name": _device_name(runtime),
        # CPU inference threads (the threads option or $EDGEPOSE_THREADS; 0: the runtime's own choice)
        "threads": runtime.describe().get("threads"),
        "model": bundle.model_name,
        "precision": bundle.precision,
        "input_size": f"{w}x{h}",
        "target": bundle.target,
        "edgepose_version": __version__,
        "git_commit": git_commit(),
    }
    if runtime.name == "openvino":
        fp["compute_precision"] = runtime.effective_precision()
    if runtime.name == "tensorrt":
        fp["tensorrt_version"] = runtime.version()
    if jetson is not None:
        fp["jetpack"] = jetson.get("l4t")
        fp["jetson_model"] = jetson.get("model")
        fp["power_mode"] = jetson.get("power_mode")
    return fp


def device_label(fp: dict[str, Any]) -> str:
    """Short name of what ran the model: the accelerator when there is one, else the CPU."""
    name = fp.get("jetson_model") or fp.get("device_name") or fp.get("cpu") or "unknown device"
    for noise in ("(R)", "(TM)", "CPU ", "Processor", "  "):
        name = name.replace(noise, " " if noise == "  " else "")
    name = " ".join(name.split())
    return name.split(" @ ")[0]
