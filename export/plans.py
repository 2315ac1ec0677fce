"""Which TensorRT plan in a bundle this device can run, and how plans are named and recorded.

A TensorRT plan runs only with the TensorRT version that built it, and is tuned for one GPU model: a
bundle shipped to a fleet of Jetsons therefore holds one plan per (device, TensorRT version, precision,
DLA core), each built on such a device by ``edgepose build``. The manifest lists them under
``tensorrt.plans`` by artifact role (``plan:jetson-orin-nano-sm87-trt10.3.0-fp16``) with what they were
built for. Selection is pure Python; ``probe_device`` is the one function that asks TensorRT and CUDA.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgepose.errors import BundleError, RuntimeUnavailable

PLAN_PREFIX = "plan:"
TRT_MISSING = (
    "TensorRT is not installed here: on a Jetson it comes with JetPack (sudo apt install "
    "nvidia-tensorrt python3-libnvinfer), see examples/jetson/README.md"
)
PYCUDA_MISSING = "pycuda is not installed here: pip install 'edgepose[jetson]'"

#: L4T release -> JetPack release (NVIDIA's JetPack archive)
JETPACK_FOR_L4T = {
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "36.2.0": "6.0 DP",
    "35.6.1": "5.1.5",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
    "35.2.1": "5.1",
}


@dataclass(frozen=True)
class DeviceInfo:
    """What a plan is tied to: GPU model, compute capability, TensorRT version (and the Jetson, if any)."""

    gpu: str
    compute_capability: str  # "8.7"
    tensorrt: str  # "10.3.0"
    board: str | None = None  # "NVIDIA Jetson Orin Nano Developer Kit"
    l4t: str | None = None  # "36.4.0"
    jetpack: str | None = None  # "6.1"

    def describe(self) -> str:
        cc = self.compute_capability.replace(".", "")
        return f"{self.board or self.gpu}, sm{cc}, TensorRT {self.tensorrt}"


# -- naming ------------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """'NVIDIA Jetson AGX Orin Developer Kit' -> 'jetson-agx-orin'; 'NVIDIA RTX A4000' -> 'rtx-a4000'."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    drop = {"nvidia", "developer", "kit", "engineering", "reference", "module"}
    return "-".join(w for w in words if w not in drop) or "gpu"


def trt_version(version: str) -> str:
    """Major.minor.patch: the part of a TensorRT version that a plan must match ('8.6.2.3' -> '8.6.2')."""
    parts = re.findall(r"\d+", version)[:3]
    return ".".join(parts + ["0"] * (3 - len(parts)))


def plan_role(device: DeviceInfo, precision: str, dla_core: int | None = None) -> str:
    cc = device.compute_capability.replace(".", "")
    name = f"{slug(device.board or device.gpu)}-sm{cc}-trt{trt_version(device.tensorrt)}-{precision}"
    return PLAN_PREFIX + name + (f"-dla{dla_core}" if dla_core is not None else "")


def plan_file_name(role: str) -> str:
    return role.removeprefix(PLAN_PREFIX) + ".plan"


def plan_record(device: DeviceInfo, precision: str, dla_core: int | None, **extra: Any) -> dict[str, Any]:
    """The manifest entry for one plan (``tensorrt.plans[role]``)."""
    return {**asdict(device), "precision": precision, "dla_core": dla_core, **extra}


def plans_in(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recorded plans whose artifact the bundle actually has, by role."""
    recorded = (manifest.get("tensorrt") or {}).get("plans") or {}
    artifacts = manifest.get("artifacts") or {}
    return {role: rec for role, rec in recorded.items() if role in artifacts}


# -- selection ---------------------------------------------------------------------------------------------
def _fits(rec: dict[str, Any], device: DeviceInfo) -> bool:
    if trt_version(str(rec.get("tensorrt", ""))) != trt_version(device.tensorrt):
        return False
    if str(rec.get("compute_capability")) != device.compute_capability or rec.get("gpu") != device.gpu:
        return False
    # Jetson modules share the GPU name ("Orin") but not their SM count: the board must match when known
    return not (rec.get("board") and device.board and rec["board"] != device.board)


def select_plan(
    manifest: dict[str, Any],
    device: DeviceInfo,
    bundle_path: str | Path,
    dla_core: int | None = None,
    precision: str | None = None,
) -> str:
    """The role of the plan to run on ``device``; a ``BundleError`` naming the plans and the fix otherwise.

    ``dla_core`` given: only plans built for that DLA core. Not given: GPU plans first, then DLA plans.
    ``precision`` given: plans of that precision first. Among equals, the most recently built.
    """
    plans = plans_in(manifest)
    build = f"edgepose build {bundle_path}" + (f" --dla-core {dla_core}" if dla_core is not None else "")
    if not plans:
        raise BundleError(
            f"bundle {bundle_path} has no TensorRT plan; build one on this device with: {build}"
        )
    fitting = {r: p for r, p in plans.items() if _fits(p, device)}
    if dla_core is not None:
        fitting = {r: p for r, p in fitting.items() if p.get("dla_core") == dla_core}
    if not fitting:
        have = "; ".join(sorted(_describe(p) for p in plans.values()))
        wanted = device.describe() + (f", DLA core {dla_core}" if dla_core is not None else "")
        raise BundleError(
            f"bundle {bundle_path} has no TensorRT plan for this device ({wanted}); it has plans for: "
            f"{have}; build one here with: {build}"
        )

    def rank(item: tuple[str, dict[str, Any]]) -> tuple:
        _, p = item
        return (
            p.get("dla_core") is None,
            precision is None or p.get("precision") == precision,
            str(p.get("built", "")),
        )

    return max(fitting.items(), key=rank)[0]


def _describe(rec: dict[str, Any]) -> str:
    cc = str(rec.get("compute_capability", "?")).replace(".", "")
    where = rec.get("board") or rec.get("gpu", "?")
    text = f"{where} sm{cc} TensorRT {rec.get('tensorrt', '?')} {rec.get('precision', '?')}"
    return text + (f" DLA{rec['dla_core']}" if rec.get("dla_core") is not None else "")


# -- this device -------------------------------------------------------------------------------------------
def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' (``/etc/nv_tegra_release``) -> '36.4.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else None


def jetson_release(root: str | Path = "/") -> tuple[str | None, str | None, str | None]:
    """(board, L4T, JetPack) of this Jetson, or Nones elsewhere."""
    root = Path(root)
    board = l4t = None
    model = root / "proc/device-tree/model"
    if model.is_file():
        board = model.read_bytes().decode(errors="replace").strip("\x00\n ") or None
    release = root / "etc/nv_tegra_release"
    if release.is_file():
        l4t = parse_l4t_release(release.read_text(errors="replace"))
    if l4t is None:
        return None, None, None
    return board, l4t, JETPACK_FOR_L4T.get(l4t)


def probe_device(device_index: int = 0, root: str | Path = "/") -> DeviceInfo:
    """Ask TensorRT and CUDA (pycuda) what this device is; ``RuntimeUnavailable`` when they are missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeUnavailable(TRT_MISSING) from e
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise RuntimeUnavailable(PYCUDA_MISSING) from e
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as e:
        raise RuntimeUnavailable(
            f"CUDA cannot start on this machine ({e}); is the NVIDIA driver loaded?"
        ) from e
    if not 0 <= device_index < count:
        raise RuntimeUnavailable(f"there is no CUDA device {device_index} here ({count} found)")
    dev = cuda.Device(device_index)
    major, minor = dev.compute_capability()
    board, l4t, jetpack = jetson_release(root)
    return DeviceInfo(dev.name(), f"{major}.{minor}", trt_version(trt.__version__), board, l4t, jetpack)
