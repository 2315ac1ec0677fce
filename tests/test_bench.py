"""edgepose bench / report: per-stage timing on real bundles, JSON and SQLite history, plots, refusals."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from edgepose.bench import history
from edgepose.bench.decoder_timing import numba_vs_numpy, same_poses
from edgepose.bench.timing import STAGES, STATS, FrameCycle, measure_latency, timer_overhead_ns
from edgepose.errors import DataError
from edgepose.poses import Poses

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode != 0
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    from edgepose.export.pipeline import ExportOptions, export_model

    root = tmp_path_factory.mktemp("bench")
    out = {}
    for target in ("cpu", "openvino", "jetson"):
        out[target] = root / target
        export_model(
            ExportOptions(
                model="kapao-t", random_weights=True, imgsz="256", target=target, output=out[target]
            ),
            log=lambda m: None,
        )
    return out


def test_bench_two_bundles_json_and_history(bundles, tmp_path):
    db, js = tmp_path / "bench.sqlite", tmp_path / "bench.json"
    args = ["bench", str(bundles["cpu"]), str(bundles["openvino"]), "--iters", "5", "--warmup", "2"]
    res = _cli(*args, "--json", str(js), "--db", str(db))
    assert res.returncode == 0, res.stderr
    for word in ("preprocess", "inference", "postprocess", "total", "p99", "FPS", "× infer"):
        assert word in res.stdout
    runs = json.loads(js.read_text())["runs"]
    assert [r["bundle"] for r in runs] == [str(bundles["cpu"]), str(bundles["openvino"])]
    assert [r["runtime"] for r in runs] == ["onnxruntime", "openvino"]
    for r in runs:
        assert r["precision"] == "fp32" and r["mode"] == "latency"
        assert set(r["stages"]) == set(STAGES)
        for figures in r["stages"].values():
            assert set(figures) == set(STATS)
            assert 0 < figures["min"] <= figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"]
        assert r["fps"] > 0 and r["first_frame_ms"] > 0 and 0 < r["timer_overhead_ms"] < 0.1
        fp = r["fingerprint"]
        assert fp["model"] == "kapao-t" and fp["input_size"] == "256x256" and fp["cores"] >= 1
        assert isinstance(fp["busy"], bool) and fp["load_start"] is not None
        assert fp["runtime"] == r["runtime"] and fp["runtime_version"]
    assert runs[1]["fingerprint"]["device_name"]  # OpenVINO's FULL_DEVICE_NAME
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM stages").fetchone()[0] == 2 * len(STAGES)
    con.close()
    res = _cli(*args, "--db", str(db))
    assert res.returncode == 0, res.stderr
    stored = history.read_runs(db)
    assert len(stored) == 4 and [r["runtime"] for r in stored[2:]] == ["onnxruntime", "openvino"]
    assert stored[3]["stages"]["total"]["p50"] > 0

    png, md = tmp_path / "plot.png", tmp_path / "report.md"
    res = _cli("report", "--db", str(db), "--plot", str(png), "--markdown", str(md), "--last", "3")
    assert res.returncode == 0, res.stderr
    assert "kapao-t" in res.stdout
    cv2 = pytest.importorskip("cv2")
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 600
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # bars, text and colours, not a blank canvas
    text = md.read_text()
    assert "| total p50 |" in text and text.count("| kapao-t |") == 3 and "## Devices" in text


def test_stages_add_up_and_timer_overhead_is_small(bundles):
    import edgepose
    from edgepose.samples import sample_images

    with edgepose.load(bundles["cpu"]) as est:
        (res,) = measure_latency([est], FrameCycle(sample_images()), warmup=3, iters=30)
    st = res.stages
    # Means add up whatever the load (the mean of a sum is the sum of the means): only the timer's own
    # gaps between stages separate them.
    means = st["preprocess"]["mean"] + st["inference"]["mean"] + st["postprocess"]["mean"]
    assert abs(st["total"]["mean"] - means) <= 0.03 * means, {k: v["mean"] for k, v in st.items()}
    # Medians add up only when the machine is quiet (README's table): a loaded machine skews each stage's
    # distribution differently.
    import os

    from edgepose.bench.fingerprint import is_busy

    if not is_busy(os.getloadavg()[0], os.cpu_count() or 1):
        parts = st["preprocess"]["p50"] + st["inference"]["p50"] + st["postprocess"]["p50"]
        assert abs(st["total"]["p50"] - parts) <= 0.10 * parts, {k: v["p50"] for k, v in st.items()}
    assert res.iterations == 30 and res.first_frame_ms > 0
    overhead_ms = timer_overhead_ns() / 1e6
    assert overhead_ms < 0.01 * st["total"]["p50"], (overhead_ms, st["total"]["p50"])


def test_latency_blocks_run_each_bundle_back_to_back(bundles):
    """--block N: N frames on one bundle, then N on the next; every bundle gets exactly --iters frames."""
    import edgepose
    from edgepose.samples import sample_images

    order: list[str] = []

    class Recorded:
        def __init__(self, est, name: str) -> None:
            self._est, self._name = est, name
            self.input_size = est.input_size

        def preprocess(self, *args):
            return self._est.preprocess(*args)

        def infer(self, batch):
            order.append(self._name)
            return self._est.infer(batch)

        def postprocess(self, *args):
            return self._est.postprocess(*args)

    with edgepose.load(bundles["cpu"]) as a, edgepose.load(bundles["openvino"]) as b:
        targets = [Recorded(a, "a"), Recorded(b, "b")]
        res = measure_latency(targets, FrameCycle(sample_images()), warmup=0, iters=7, block=3)
    timed = "".join(order[2:])  # after each bundle's first frame
    assert timed == "aaabbbaaabbbab" and [r.iterations for r in res] == [7, 7]


def test_bad_inputs_are_one_sentence(bundles, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        _one_line_error(_cli("bench", str(bundles["jetson"]), "--iters", "2"), "TensorRT")
    _one_line_error(_cli("bench", str(bundles["cpu"]), "--iters", "0"), "--iters")
    _one_line_error(_cli("bench", str(bundles["cpu"]), "--iters", "2", "--block", "0"), "--block")
    _one_line_error(
        _cli("bench", str(bundles["cpu"]), "--throughput", "--iters", "2"), "onnxruntime", "--throughput"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _cli("bench", str(bundles["cpu"]), "--iters", "2", "--db", str(blocker / "bench.sqlite"))
    _one_line_error(res, "--db")
    assert "total" not in res.stdout  # refused before measuring
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all\n" * 50)
    before = corrupt.read_bytes()
    res = _cli("bench", str(bundles["cpu"]), "--iters", "2", "--db", str(corrupt))
    _one_line_error(res, "not a SQLite database")
    assert corrupt.read_bytes() == before
    _one_line_error(_cli("report", "--db", str(corrupt)), "not a SQLite database")
    assert corrupt.read_bytes() == before


def test_foreign_and_future_databases_are_refused_untouched(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE things (x INTEGER)")
    con.commit()
    con.close()
    future = tmp_path / "future.sqlite"
    con = sqlite3.connect(future)
    con.execute(f"PRAGMA application_id = {history.APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {history.SCHEMA_VERSION + 1}")
    con.execute("CREATE TABLE runs (id INTEGER)")
    con.commit()
    con.close()
    for path, words in ((foreign, "not an edgepose benchmark history"), (future, "newer than")):
        before = path.read_bytes()
        with pytest.raises(DataError, match=words):
            history.check_db(path)
        with pytest.raises(DataError, match=words):
            history.append_runs(path, [])
        assert path.read_bytes() == before


def _run_record(fps: float, batch: int = 1) -> dict:
    stats = {s: 1.0 for s in STATS}
    return {
        "bundle": "b",
        "runtime": "onnxruntime",
        "precision": "fp32",
        "mode": "latency",
        "fingerprint": {"model": "kapao-t", "cpu": "test cpu", "busy": False},
        "stages": {s: dict(stats) for s in STAGES},
        "fps": fps,
        "first_frame_ms": 3.0,
        "timer_overhead_ms": 0.001,
        "batch": batch,
    }


def test_v1_database_migrates_to_current(tmp_path):
    path = tmp_path / "v1.sqlite"
    con = sqlite3.connect(path, isolation_level=None)
    history.MIGRATIONS[0](con)  # exactly the v1 schema
    con.execute(f"PRAGMA application_id = {history.APPLICATION_ID}")
    con.execute("PRAGMA user_version = 1")
    run = _run_record(50.0, batch=2)
    con.execute(
        "INSERT INTO runs (created, bundle, model, runtime, precision, mode, busy, fps, first_frame_ms, "
        "json) "
        "VALUES ('2024-01-01T00:00:00', 'b', 'kapao-t', 'onnxruntime', 'fp32', 'latency', 0, 50.0, 3.0, ?)",
        (json.dumps(run),),
    )
    for stage in STAGES:
        con.execute("INSERT INTO stages VALUES (1, ?, 1, 1, 1, 1, 1, 1, 1)", (stage,))
    con.close()
    with pytest.raises(DataError, match="upgrade"):
        history.read_runs(path)  # reading never migrates
    history.append_runs(path, [_run_record(60.0)])
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
    assert con.execute("SELECT batch, timer_overhead_ms FROM runs ORDER BY id").fetchall() == [
        (2, 0.001),
        (1, 0.001),
    ]
    con.close()
    runs = history.read_runs(path, model="kapao-t")
    assert [r["fps"] for r in runs] == [50.0, 60.0] and runs[0]["stages"]["total"]["p50"] == 1.0
    assert [r["fps"] for r in history.read_runs(path, last=1)] == [60.0]


def test_plot_without_matplotlib_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from edgepose.bench.report import plot_runs\n"
        "from edgepose.errors import UsageError\n"
        "try:\n    plot_runs([], 'x.png')\nexcept UsageError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert "pip install 'edgepose[report]'" in out.stdout, out.stderr


def _poses(shift: float = 0.0) -> Poses:
    kps = np.zeros((2, 17, 3), np.float32)
    kps[..., 0] = np.arange(17) + shift
    scores = np.array([0.9, 0.5], np.float32)
    boxes, fused = np.zeros((2, 4), np.float32), np.zeros((2, 17), bool)
    return Poses(keypoints=kps, scores=scores, boxes=boxes, fused=fused)


def test_decoder_timing_reports_both_medians_and_their_ratio():
    slow_calls = []

    def slow() -> Poses:
        slow_calls.append(1)
        time.sleep(0.002)
        return _poses()

    row, poses = numba_vs_numpy(_poses, slow, iters=5, warmup=1)
    assert len(poses) == 2
    assert row["poses"] == 2
    assert len(slow_calls) == 1 + 1 + 5  # agreement check, warm-up, timed
    assert row["numpy_ms"] >= 2.0 > row["numba_ms"]
    assert row["speedup"] == pytest.approx(row["numpy_ms"] / row["numba_ms"])


def test_decoder_timing_refuses_decoders_that_disagree():
    with pytest.raises(SystemExit, match="disagree"):
        numba_vs_numpy(_poses, lambda: _poses(shift=0.01), iters=1)
    assert same_poses(_poses(), _poses(shift=0.0005))
