"""What the graph-forms scripts share: a runner per runtime for one ONNX file, and the round-robin
timer that alternates forms in blocks so machine noise hits every form alike. (A leading underscore:
a helper, not a script; ``tests/test_benchmark_scripts.py`` runs the scripts only.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], list]


def runners(
    path: Path, threads: int, runtimes: Iterable[str] = ("onnxruntime", "openvino")
) -> dict[str, Runner]:
    """runtime -> one inference of ``path`` (a single input); OpenVINO pinned to f32, as edgepose pins it."""
    out: dict[str, Runner] = {}
    if "onnxruntime" in runtimes:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out["onnxruntime"] = lambda x: session.run(None, {name: x})
    if "openvino" in runtimes:
        import openvino as ov

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        out["openvino"] = lambda x: [t.copy() for t in request.infer({0: x}).values()]
    return out


def time_round_robin(
    forms: dict[str, Runner], x: np.ndarray, iters: int, block: int, warmup: int = 5
) -> dict[str, float]:
    """Median ms per form: ``warmup`` calls each, then the forms take turns, ``block`` calls at a time,
    until each has ``iters`` (rounded up to a whole block)."""
    for run in forms.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {form: [] for form in forms}
    while len(next(iter(times.values()))) < iters:
        for form, samples in times.items():
            for _ in range(block):
                t0 = time.perf_counter()
                forms[form](x)
                samples.append((time.perf_counter() - t0) * 1e3)
    return {form: statistics.median(t) for form, t in times.items()}
