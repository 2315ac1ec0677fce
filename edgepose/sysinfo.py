"""What this machine is: CPU and its instruction sets, memory, OS, accelerators, Jetson model.

Used by ``edgepose doctor``, benchmark fingerprints, and quantization manifests (INT8 behaviour depends
on VNNI/AMX). Reads /proc and /sys where they exist; never fails, reports "unknown" instead.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: instruction-set flags worth reporting, as /proc/cpuinfo names them -> display name
_ISA_FLAGS = {
    "sse4_2": "SSE4.2",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON dot product",
    "sve": "SVE",
}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def cpu_info() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    model = info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()
    return {
        "model": model or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count() or 0,
        "isa": [name for flag, name in _ISA_FLAGS.items() if flag in flags],
    }


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return 0.0


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def jetson_info() -> dict[str, str] | None:
    """Jetson model, L4T release and power mode, or None when this is not a Jetson."""
    release = Path("/etc/nv_tegra_release")
    if not release.exists():
        return None
    out = {"l4t": release.read_text(errors="replace").splitlines()[0].strip()}
    model = Path("/proc/device-tree/model")
    if model.exists():
        out["model"] = model.read_text(errors="replace").strip("\x00\n ")
    nvp = Path("/etc/nvpmodel.conf")
    status = Path("/var/lib/nvpmodel/status")
    if status.exists():
        out["power_mode"] = status.read_text(errors="replace").strip()
    elif nvp.exists():
        out["power_mode"] = "see nvpmodel -q"
    return out


def machine_summary() -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "jetson": jetson_info(),
    }


def gpu_name() -> str | None:
    """The NVIDIA GPU's name (Jetson: the module's model), or None when there is none to ask."""
    jetson = jetson_info()
    if jetson is not None:
        return jetson.get("model", "NVIDIA Jetson")
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(names) or None
