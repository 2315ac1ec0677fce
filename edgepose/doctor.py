"""``edgepose doctor``: runtimes, versions, devices and CPU features found on this machine."""

from __future__ import annotations

import importlib.util
import re

from edgepose.sysinfo import machine_summary


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a broken install should be reported, not crash the doctor
        return f"broken ({e.__class__.__name__}: {e})"
    return getattr(mod, "__version__", "installed")


def collect() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    m = machine_summary()
    cpu = m["cpu"]
    rows.append(("CPU", f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores)"))
    rows.append(("instruction sets", ", ".join(cpu["isa"]) or "none detected"))
    rows.append(("memory", f"{m['memory_gib']} GiB"))
    rows.append(("OS / Python", f"{m['os']} / Python {m['python']}"))
    if m["jetson"]:
        rows.append(("Jetson", ", ".join(f"{k}: {v}" for k, v in m["jetson"].items())))

    ort_v = _version("onnxruntime")
    if ort_v:
        import onnxruntime as ort

        rows.append(("onnxruntime", f"{ort_v}; providers: {', '.join(ort.get_available_providers())}"))
    else:
        rows.append(("onnxruntime", "not installed (pip install edgepose)"))

    ov_v = _version("openvino")
    if ov_v:
        try:
            import openvino as ov

            core = ov.Core()
            devs = []
            for d in core.available_devices:
                try:
                    caps = core.get_property(d, "OPTIMIZATION_CAPABILITIES")
                    name = core.get_property(d, "FULL_DEVICE_NAME")
                    devs.append(f"{d} ({name}; {', '.join(caps)})")
                except Exception:
                    devs.append(d)
            rows.append(("openvino", f"{ov_v}; devices: {'; '.join(devs) or 'none'}"))
        except Exception as e:
            rows.append(("openvino", f"{ov_v}; cannot list devices ({e})"))
    else:
        rows.append(("openvino", "not installed (pip install 'edgepose[openvino]')"))

    trt_v = _version("tensorrt")
    rows.append(("tensorrt", trt_v or "not installed (comes with JetPack / NVIDIA's TensorRT packages)"))
    rows.append(("pycuda", _version("pycuda") or "not installed (pip install 'edgepose[jetson]')"))
    rows.append(("numba", _version("numba") or "missing"))
    rows.append(
        (
            "torch (export/training only)",
            "installed"
            if importlib.util.find_spec("torch")
            else "not installed (pip install 'edgepose[export]')",
        )
    )

    cv_v = _version("cv2")
    if cv_v:
        import cv2

        info = cv2.getBuildInformation()
        gst = re.search(r"GStreamer:\s*(\S+)", info)
        rows.append(("opencv", f"{cv_v}; GStreamer: {gst.group(1) if gst else 'NO'}"))
    return rows
