"""TensorRT: plan naming/selection (pure), builder and runtime against fakes of the ``tensorrt`` and
``pycuda.driver`` modules, and real builds that run only where TensorRT and a CUDA GPU exist.

The fakes implement only the calls edgepose makes, with behaviour that lets a test fail: device memory is
a dict of byte arrays keyed by address, the fake engine reads its inputs from the addresses bound with
``set_tensor_address`` and computes with ONNX Runtime on the ONNX embedded in the fake plan, allocations
fail without a current CUDA context, and a stream in capture mode records instead of running.
"""

from __future__ import annotations

import base64
import importlib.machinery
import json
import sys
import types

import numpy as np
import onnx
import pytest
from edgepose.export.onnx2tensorrt import (
    add_plan_to_bundle,
    build_bundle_plan,
    build_plan,
    default_timing_cache,
    entropy_calibrator,
)
from edgepose.export.plans import (
    DeviceInfo,
    jetson_release,
    parse_l4t_release,
    plan_role,
    plans_in,
    probe_device,
    select_plan,
    slug,
    trt_version,
)
from edgepose.runtimes import create_runtime
from edgepose.runtimes.tensorrt import device_index, import_tensorrt
from onnx import helper, numpy_helper

from edgepose.bundle import load_bundle, write_bundle
from edgepose.errors import BundleError, ExportError, RuntimeUnavailable, UsageError
from edgepose.estimator import open_runtime
from tests.onnx_models import conv_sigmoid_model, conv_sigmoid_reference


def _real_tensorrt() -> str | None:
    """None when TensorRT, pycuda and a CUDA GPU are all here; otherwise why not."""
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        return None if cuda.Device.count() > 0 else "no CUDA device"
    except Exception as e:  # ImportError, or a driver error
        return str(e)


REAL_REASON = _real_tensorrt()  # evaluated before any fake is installed


# ===================================== fakes at the module boundary ======================================
class FakeState:
    def __init__(self, gpu: str, cc: tuple[int, int], version: str, dla_cores: int) -> None:
        self.gpu, self.cc, self.version, self.dla_cores = gpu, cc, version, dla_cores
        self.memory: dict[int, bytearray] = {}
        self.next_addr = 0x1000
        self.ctx_stack: list[object] = []
        self.detached = 0
        self.freed: list[int] = []
        self.copies: list[tuple[str, int, bytes]] = []
        self.addresses: dict[str, int] = {}
        self.executes = 0
        self.launches = 0
        self.capturing: object | None = None
        self.built: list[dict] = []

    def need_context(self, what: str) -> None:
        if not self.ctx_stack:
            raise RuntimeError(f"fake CUDA: {what} without a current context")


def make_fake_pycuda(state: FakeState) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Allocation:
        def __init__(self, nbytes: int) -> None:
            state.need_context("mem_alloc")
            self.addr = state.next_addr
            state.next_addr += (nbytes + 255) // 256 * 256 + 256
            state.memory[self.addr] = bytearray(nbytes)

        def __int__(self) -> int:
            return self.addr

        def free(self) -> None:
            state.need_context("free")
            del state.memory[self.addr]
            state.freed.append(self.addr)

    class PrimaryContext:
        def push(self) -> None:
            state.ctx_stack.append(self)

        def detach(self) -> None:
            state.detached += 1

    class Context:
        @staticmethod
        def pop() -> None:
            state.ctx_stack.pop()

    class Device:
        def __init__(self, index: int) -> None:
            if index != 0:
                raise Error(f"invalid device ordinal {index}")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return state.gpu

        def compute_capability(self) -> tuple[int, int]:
            return state.cc

        def retain_primary_context(self) -> PrimaryContext:
            return PrimaryContext()

    class Graph:
        def __init__(self, ops: list) -> None:
            self.ops = ops

        def instantiate(self) -> Graph:
            return self

        def launch(self, stream: object = None) -> None:
            state.launches += 1
            for op in self.ops:
                op()

    class Stream:
        def __init__(self) -> None:
            state.need_context("Stream()")
            self.handle = 0xBEEF
            self.ops: list | None = None

        def synchronize(self) -> None:
            pass

        def begin_capture(self) -> None:
            self.ops, state.capturing = [], self

        def end_capture(self) -> Graph:
            ops, self.ops, state.capturing = self.ops, None, None
            return Graph(ops)

    def _write(dev: Allocation, host: np.ndarray, kind: str) -> None:
        state.need_context(kind)
        buf = state.memory[int(dev)]
        assert len(buf) == host.nbytes, f"{kind}: {host.nbytes} bytes into a {len(buf)}-byte buffer"
        buf[:] = np.ascontiguousarray(host).tobytes()
        state.copies.append((kind, int(dev), bytes(buf)))

    def memcpy_htod_async(dev, host, stream) -> None:
        _write(dev, host, "htod")

    def memcpy_htod(dev, host) -> None:
        _write(dev, host, "htod")

    def memcpy_dtoh_async(host, dev, stream) -> None:
        state.need_context("dtoh")
        host[...] = np.frombuffer(bytes(state.memory[int(dev)]), host.dtype).reshape(host.shape)

    def pagelocked_empty(shape, dtype) -> np.ndarray:
        return np.full(shape, np.nan, dtype)

    cuda.Error, cuda.Device, cuda.Context, cuda.Stream = Error, Device, Context, Stream
    cuda.init = lambda: None
    cuda.mem_alloc = Allocation
    cuda.pagelocked_empty = pagelocked_empty
    cuda.memcpy_htod_async, cuda.memcpy_htod, cuda.memcpy_dtoh_async = (
        memcpy_htod_async,
        memcpy_htod,
        memcpy_dtoh_async,
    )
    return cuda


def _onnx_io(proto: onnx.ModelProto) -> tuple[list, list]:
    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

    return [(vi.name, dims(vi)) for vi in proto.graph.input], [
        (vi.name, dims(vi)) for vi in proto.graph.output
    ]


def make_fake_tensorrt(state: FakeState) -> types.ModuleType:
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = state.version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, level: int = 2) -> None:
            self.level = level

    enum = types.SimpleNamespace
    trt.Logger = Logger
    trt.TensorIOMode = enum(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = enum(FLOAT="FLOAT")
    trt.nptype = lambda dt: {"FLOAT": np.float32}[dt]
    trt.MemoryPoolType = enum(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = enum(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
    trt.DeviceType = enum(GPU="GPU", DLA="DLA")
    trt.NetworkDefinitionCreationFlag = enum(EXPLICIT_BATCH=0)
    device_key = f"{state.gpu}|{state.cc}|{state.version}".encode()

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            self.base_initialised = True

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.onnx, self.inputs, self.outputs = flags, None, [], []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            try:
                proto = onnx.load(path)
            except Exception as e:
                self.errors = [f"ModelImporter: failed to parse {path}: {e}"]
                return False
            ins, outs = _onnx_io(proto)
            self.network.onnx = proto.SerializeToString()
            self.network.inputs = [Tensor(n, s) for n, s in ins]
            self.network.outputs = outs
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            entries = int(self.data.rsplit(b"=", 1)[1]) if self.data else 0
            return device_key + b"|entries=" + str(entries + 1).encode()

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.pools: dict[str, int] = {}
            self.default_device_type, self.DLA_core, self.int8_calibrator, self.cache = "GPU", -1, None, None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data and not cache.data.startswith(device_key):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    def _calibrate(network: Network, calib: object) -> dict:
        cached = calib.read_calibration_cache()
        if cached is not None:
            return {"from_cache": True, "table": json.loads(bytes(cached))}
        names = [t.name for t in network.inputs]
        calib.get_batch_size()
        amax = 0.0
        while (ptrs := calib.get_batch(names)) is not None:
            data = np.frombuffer(bytes(state.memory[ptrs[0]]), np.float32)
            amax = max(amax, float(np.abs(data).max()))
        table = {names[0]: amax}
        calib.write_calibration_cache(json.dumps(table).encode())
        return {"from_cache": False, "table": table}

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.num_DLA_cores = state.dla_cores

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            state.need_context("build")
            calibration = _calibrate(network, config.int8_calibrator) if config.int8_calibrator else None
            plan = {
                "fake_plan": state.version,
                "onnx": base64.b64encode(network.onnx).decode(),
                "inputs": [(t.name, t.shape) for t in network.inputs],
                "outputs": network.outputs,
                "network_flags": network.flags,
                "flags": sorted(config.flags),
                "pools": config.pools,
                "device_type": config.default_device_type,
                "dla_core": config.DLA_core,
                "calibration": calibration,
            }
            state.built.append(plan)
            return json.dumps(plan).encode()

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes = engine, {n: list(s) for n, s in engine.plan["inputs"]}
            self.session = ort.InferenceSession(base64.b64decode(engine.plan["onnx"]))

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            if name not in self.shapes:
                return False
            self.shapes[name] = list(shape)
            return True

        def get_tensor_shape(self, name: str) -> list[int]:
            if name in self.shapes:
                return self.shapes[name]
            template = dict(self.engine.plan["outputs"])[name]
            first = next(iter(self.shapes.values()))  # conv models: spatial dims follow the input
            return [first[i] if d < 0 else d for i, d in enumerate(template)]

        def set_tensor_address(self, name: str, address: int) -> bool:
            state.addresses[name] = address
            return name in self.engine.names

        def _run(self, addresses: dict[str, int], shapes: dict[str, list[int]]) -> None:
            feeds = {}
            for name, _ in self.engine.plan["inputs"]:
                data = bytes(state.memory[addresses[name]])  # KeyError: the buffer was freed
                feeds[name] = np.frombuffer(data, np.float32).reshape(shapes[name])
            outs = self.session.run(None, feeds)
            for (name, _), value in zip(self.engine.plan["outputs"], outs):
                if "FP16" in self.engine.plan["flags"]:
                    value = value.astype(np.float16).astype(np.float32)
                buf = state.memory[addresses[name]]
                assert len(buf) == value.nbytes, f"output {name}: {len(buf)}-byte buffer for {value.nbytes}"
                buf[:] = value.tobytes()

        def execute_async_v3(self, stream_handle: int) -> bool:
            state.need_context("execute_async_v3")
            state.executes += 1
            if any(n not in state.addresses for n in self.engine.names):
                return False
            # like a CUDA graph, a captured launch keeps the addresses and shapes of its capture
            snapshot = (dict(state.addresses), {k: list(v) for k, v in self.shapes.items()})
            if state.capturing is not None and state.capturing.handle == stream_handle:
                state.capturing.ops.append(lambda: self._run(*snapshot))
            else:
                self._run(*snapshot)
            return True

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.plan = plan
            self.names = [n for n, _ in plan["inputs"]] + [n for n, _ in plan["outputs"]]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name in dict(self.plan["inputs"]) else "OUTPUT"

        def get_tensor_shape(self, name: str) -> list[int]:
            return {**dict(self.plan["inputs"]), **dict(self.plan["outputs"])}[name]

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            state.need_context("deserialize")
            try:
                plan = json.loads(data)
            except ValueError:
                return None
            if plan.get("fake_plan") != state.version:  # plans run only with the TensorRT that built them
                return None
            return Engine(plan)

    trt.IInt8EntropyCalibrator2, trt.Builder, trt.OnnxParser, trt.Runtime = (
        IInt8EntropyCalibrator2,
        Builder,
        OnnxParser,
        Runtime,
    )
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """``install(gpu=..., cc=..., version=...)`` puts fake ``tensorrt``/``pycuda`` modules in place."""

    def install(gpu="Orin", cc=(8, 7), version="8.6.2", dla_cores=2) -> FakeState:
        state = FakeState(gpu, cc, version, dla_cores)
        pycuda = types.ModuleType("pycuda")
        pycuda.__spec__ = importlib.machinery.ModuleSpec("pycuda", None)
        pycuda.driver = make_fake_pycuda(state)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda.driver)
        monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(state))
        return state

    return install


@pytest.fixture
def tiny(tmp_path):
    return conv_sigmoid_model(tmp_path / "tiny.onnx", channels=5)


def _x(h=8, w=8, seed=1):
    return np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)


def _plan(path):
    return json.loads(path.read_bytes())


def _dynamic(path):
    proto = onnx.load(str(path))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        d = vi.type.tensor_type.shape.dim
        d[2].dim_param, d[3].dim_param = "H", "W"
    out = path.with_name("dynamic.onnx")
    onnx.save(proto, str(out))
    return out


def _qdq(path):
    """The tiny model with its input quantized/dequantized: an explicitly quantized (Q/DQ) ONNX."""
    proto = onnx.load(str(path))
    g = proto.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(1 / 127, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ]
    )
    q = helper.make_node("QuantizeLinear", ["images", "s", "zp"], ["q"])
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])
    for node in g.node:
        node.input[:] = ["dq" if i == "images" else i for i in node.input]
    nodes = [q, dq, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    out = path.with_name("qdq.onnx")
    onnx.save(proto, str(out))
    return out


# ============================================ pure logic =================================================
def test_names_versions_and_jetson_release(tmp_path):
    assert slug("NVIDIA Jetson AGX Orin Developer Kit") == "jetson-agx-orin"
    assert slug("NVIDIA GeForce RTX 4090") == "geforce-rtx-4090"
    assert trt_version("8.6.2.3") == "8.6.2" and trt_version("10.3") == "10.3.0"
    nano = DeviceInfo("Orin", "8.7", "10.3.0.30", "NVIDIA Jetson Orin Nano Developer Kit", "36.4.0", "6.1")
    assert plan_role(nano, "fp16") == "plan:jetson-orin-nano-sm87-trt10.3.0-fp16"
    assert plan_role(nano, "int8", dla_core=1).endswith("-int8-dla1")
    line = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13"
    assert parse_l4t_release(line) == "36.4.0" and parse_l4t_release("garbage") is None
    assert jetson_release(tmp_path) == (None, None, None)  # not a Jetson
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178\n")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Xavier NX Developer Kit\x00")
    assert jetson_release(tmp_path) == ("NVIDIA Jetson Xavier NX Developer Kit", "35.4.1", "5.1.2")
    assert "jetson-orin-nano-sm87-trt10.3.0.timing" == default_timing_cache(nano).name


def _rec(gpu="Orin", cc="8.7", trt="8.6.2", board=None, precision="fp16", dla=None, built="2026-01-01"):
    return {
        "gpu": gpu,
        "compute_capability": cc,
        "tensorrt": trt,
        "board": board,
        "precision": precision,
        "dla_core": dla,
        "built": built,
    }


def _manifest(plans):
    return {"tensorrt": {"plans": plans}, "artifacts": {r: {"file": "x"} for r in plans}}


def test_select_plan_matches_gpu_cc_and_tensorrt_and_prefers_gpu_precision_newest():
    agx, nano = "NVIDIA Jetson AGX Orin Developer Kit", "NVIDIA Jetson Orin Nano Developer Kit"
    plans = {
        "plan:agx": _rec(board=agx),
        "plan:nano-old": _rec(board=nano, built="2025-01-01"),
        "plan:nano-new": _rec(board=nano, built="2026-02-01"),
        "plan:nano-int8": _rec(board=nano, precision="int8", built="2027-01-01"),
        "plan:nano-dla0": _rec(board=nano, dla=0, built="2028-01-01"),
        "plan:nano-trt10": _rec(board=nano, trt="10.3.0", built="2029-01-01"),
        "plan:rtx": _rec(gpu="NVIDIA GeForce RTX 3090", cc="8.6"),
    }
    m = _manifest(plans)
    here = DeviceInfo("Orin", "8.7", "8.6.2.3", nano)
    assert select_plan(m, here, "b", precision="fp16") == "plan:nano-new"
    assert select_plan(m, here, "b") == "plan:nano-int8"  # no precision asked: the newest GPU plan
    assert select_plan(m, here, "b", dla_core=0) == "plan:nano-dla0"
    assert select_plan(m, DeviceInfo("Orin", "8.7", "8.6.2", agx), "b") == "plan:agx"
    assert select_plan(m, DeviceInfo("Orin", "8.7", "10.3.0", nano), "b") == "plan:nano-trt10"
    assert select_plan(m, DeviceInfo("NVIDIA GeForce RTX 3090", "8.6", "8.6.2"), "b") == "plan:rtx"
    # plans recorded without their artifact do not count
    assert "plan:gone" not in plans_in({**m, "tensorrt": {"plans": {**plans, "plan:gone": _rec()}}})


def test_no_matching_plan_names_what_exists_and_the_build_command():
    m = _manifest({"plan:a": _rec(board="NVIDIA Jetson AGX Orin Developer Kit", trt="8.6.2")})
    nx = DeviceInfo("Orin", "8.7", "8.6.2", "NVIDIA Jetson Orin NX Developer Kit")
    with pytest.raises(BundleError) as e:
        select_plan(m, nx, "bundles/kapao-s-jetson")
    msg = str(e.value)
    assert (
        "no TensorRT plan for this device (NVIDIA Jetson Orin NX Developer Kit, sm87, TensorRT 8.6.2)" in msg
    )
    assert "NVIDIA Jetson AGX Orin Developer Kit sm87 TensorRT 8.6.2 fp16" in msg
    assert msg.endswith("edgepose build bundles/kapao-s-jetson") and "\n" not in msg
    with pytest.raises(BundleError, match="TensorRT 10.3.0.*plans for.*TensorRT 8.6.2"):
        select_plan(m, DeviceInfo("Orin", "8.7", "10.3.0", "NVIDIA Jetson AGX Orin Developer Kit"), "b")
    with pytest.raises(
        BundleError, match="has no TensorRT plan; build one on this device with: edgepose build b"
    ):
        select_plan({"artifacts": {}}, nx, "b")
    with pytest.raises(BundleError, match="DLA core 1.*--dla-core 1"):
        select_plan(m, DeviceInfo("Orin", "8.7", "8.6.2", "NVIDIA Jetson AGX Orin Developer Kit"), "b", 1)


def test_device_strings():
    assert device_index(None) == device_index("cuda") == device_index("GPU") == 0
    assert device_index("cuda:1") == device_index("1") == 1
    with pytest.raises(UsageError, match="no device 'cpu'"):
        device_index("cpu")


def test_missing_tensorrt_or_pycuda_is_one_sentence(monkeypatch, fake_trt):
    fake_trt()
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'edgepose\[jetson\]'"):
        import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match="comes with JetPack"):
        probe_device()


# ====================================== builder, against the fakes =======================================
def test_probe_reads_gpu_cuda_and_tensorrt(fake_trt, tmp_path):
    fake_trt(gpu="Orin", cc=(8, 7), version="10.3.0.30")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1\n")
    info = probe_device(0, root=tmp_path)
    assert info == DeviceInfo("Orin", "8.7", "10.3.0", None, "36.4.3", "6.2")
    with pytest.raises(RuntimeUnavailable, match="no CUDA device 3"):
        probe_device(3)


@pytest.mark.parametrize("version, net_flags", [("8.6.2", 1), ("10.3.0", 0)])
def test_build_sets_precision_workspace_and_timing_cache(fake_trt, tiny, tmp_path, version, net_flags):
    state = fake_trt(version=version)
    cache = tmp_path / "cache" / "orin.timing"
    rec = build_plan(
        tiny[0], tmp_path / "a.plan", "fp16", workspace_mib=256, timing_cache=cache, log=lambda m: None
    )
    plan = _plan(tmp_path / "a.plan")
    assert plan["flags"] == ["FP16"] and plan["pools"] == {"WORKSPACE": 256 << 20}
    assert plan["network_flags"] == net_flags  # explicit batch before TensorRT 10, nothing from 10 on
    assert plan["device_type"] == "GPU" and not state.ctx_stack and state.detached == 1
    assert rec["gpu"] == "Orin" and rec["compute_capability"] == "8.7" and rec["tensorrt"] == version
    assert rec["precision"] == "fp16" and rec["dla_core"] is None and rec["timing_cache"] is False
    assert cache.read_bytes().endswith(b"entries=1")
    rec2 = build_plan(tiny[0], tmp_path / "b.plan", "fp32", timing_cache=cache, log=lambda m: None)
    assert rec2["timing_cache"] is True and cache.read_bytes().endswith(b"entries=2")
    assert _plan(tmp_path / "b.plan")["flags"] == []
    # a cache from another device is not used, and is replaced
    cache.write_bytes(b"other-gpu|entries=7")
    logs = []
    assert (
        build_plan(tiny[0], tmp_path / "c.plan", "fp16", timing_cache=cache, log=logs.append)["timing_cache"]
        is False
    )
    assert any("another device" in m for m in logs) and cache.read_bytes().endswith(b"entries=1")


def test_build_for_dla_with_gpu_fallback(fake_trt, tiny, tmp_path):
    fake_trt(dla_cores=2)
    rec = build_plan(tiny[0], tmp_path / "d.plan", "fp16", dla_core=1, log=lambda m: None)
    plan = _plan(tmp_path / "d.plan")
    assert plan["device_type"] == "DLA" and plan["dla_core"] == 1 and "GPU_FALLBACK" in plan["flags"]
    assert rec["dla_core"] == 1
    with pytest.raises(UsageError, match="2 DLA core"):
        build_plan(tiny[0], tmp_path / "e.plan", "fp16", dla_core=2, log=lambda m: None)
    with pytest.raises(UsageError, match="fp16 or int8"):
        build_plan(tiny[0], tmp_path / "e.plan", "fp32", dla_core=0, log=lambda m: None)


def test_build_refuses_what_cannot_work(fake_trt, tiny, tmp_path):
    state = fake_trt()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="parser refused bad.onnx"):
        build_plan(bad, tmp_path / "x.plan", log=lambda m: None)
    assert not state.ctx_stack and state.detached == 1  # the context is released on failure too
    with pytest.raises(ExportError, match="dynamic input"):
        build_plan(_dynamic(tiny[0]), tmp_path / "x.plan", log=lambda m: None)
    with pytest.raises(ExportError, match="no Q/DQ nodes"):
        build_plan(tiny[0], tmp_path / "x.plan", "int8", log=lambda m: None)
    with pytest.raises(UsageError, match="unknown precision"):
        build_plan(tiny[0], tmp_path / "x.plan", "int4", log=lambda m: None)
    with pytest.raises(UsageError, match="INT8"):
        build_plan(_qdq(tiny[0]), tmp_path / "x.plan", "fp16", log=lambda m: None)
    assert not (tmp_path / "x.plan").exists()


def test_int8_from_qdq_is_explicit(fake_trt, tiny, tmp_path):
    fake_trt()
    rec = build_plan(_qdq(tiny[0]), tmp_path / "q.plan", "int8", log=lambda m: None)
    assert _plan(tmp_path / "q.plan")["flags"] == ["FP16", "INT8"]
    assert rec["quantization"] == "explicit (Q/DQ)" and _plan(tmp_path / "q.plan")["calibration"] is None


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
def test_int8_calibrator_feeds_batches_and_caches_the_table(fake_trt, tiny, tmp_path, version):
    fake_trt(version=version)
    batches = [np.full((1, 3, 8, 8), v, np.float32) for v in (0.5, -2.5, 1.0)]
    table = tmp_path / "calib.cache"
    logs: list[str] = []
    calib = entropy_calibrator(batches, table)
    assert calib.base_initialised  # IInt8EntropyCalibrator2.__init__ was called
    rec = build_plan(tiny[0], tmp_path / "i.plan", "int8", calibrator=calib, log=logs.append)
    plan = _plan(tmp_path / "i.plan")
    assert plan["calibration"] == {"from_cache": False, "table": {"images": 2.5}}  # every batch reached it
    assert calib.batches_fed == 3 and json.loads(table.read_bytes()) == {"images": 2.5}
    assert rec["quantization"] == "implicit (calibrator)"
    assert any("deprecates implicit INT8" in m for m in logs) == (version == "10.3.0")
    again = entropy_calibrator(iter([]), table)
    build_plan(tiny[0], tmp_path / "j.plan", "int8", calibrator=again, log=lambda m: None)
    assert _plan(tmp_path / "j.plan")["calibration"]["from_cache"] and again.batches_fed == 0


class state_context:
    """A current CUDA context, for calling a calibrator outside a build (allocations need one)."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def __enter__(self) -> None:
        self.state.ctx_stack.append("caller")

    def __exit__(self, *exc: object) -> None:
        self.state.ctx_stack.pop()


def test_calibrator_checks_its_batches(fake_trt, tmp_path):
    state = fake_trt()
    with state_context(state):
        calib = entropy_calibrator([{"other": np.zeros((2, 3, 8, 8), np.float32)}], tmp_path / "c")
        assert calib.get_batch_size() == 2
        with pytest.raises(ExportError, match="lacks input images"):
            calib.get_batch(["images"])
        calib = entropy_calibrator(
            [np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 3, 4, 4), np.float32)], tmp_path / "c"
        )
        calib.get_batch(["images"])
        with pytest.raises(ExportError, match="change shape"):
            calib.get_batch(["images"])


# ====================================== runtime, against the fakes =======================================
def test_runtime_binds_buffers_copies_bytes_and_matches_reference(fake_trt, tiny, tmp_path):
    state = fake_trt()
    build_plan(tiny[0], tmp_path / "m.plan", "fp32", log=lambda m: None)
    rt = create_runtime("tensorrt", tmp_path / "m.plan")
    assert [s.name for s in rt.inputs] == ["images"] and rt.inputs[0].shape == (1, 3, 8, 8)
    assert [s.name for s in rt.outputs] == ["y", "z"] and rt.outputs[0].shape == (1, 5, 8, 8)
    # every IO tensor is bound to its own device buffer of the right size
    assert set(state.addresses) == {"images", "y", "z"} and len(set(state.addresses.values())) == 3
    assert len(state.memory[state.addresses["images"]]) == 3 * 8 * 8 * 4
    assert len(state.memory[state.addresses["y"]]) == 5 * 8 * 8 * 4
    x = _x()
    out = rt.infer({"images": x})
    assert state.copies[-1] == ("htod", state.addresses["images"], x.tobytes())
    y, z = conv_sigmoid_reference(x, tiny[1])
    np.testing.assert_allclose(out["y"], y, atol=1e-5)
    np.testing.assert_allclose(out["z"], z, atol=1e-6)
    assert not state.ctx_stack  # the context is pushed for the call and popped after it
    out2 = rt.infer({"images": _x(seed=2)})
    np.testing.assert_allclose(out2["y"], conv_sigmoid_reference(_x(seed=2), tiny[1])[0], atol=1e-5)
    np.testing.assert_allclose(out["y"], y, atol=1e-5)  # earlier results are copies, not the host buffer
    assert rt.describe()["runtime"] == "tensorrt" and rt.version() == "8.6.2"
    addrs = sorted(state.addresses.values())
    rt.close()
    assert sorted(state.freed) == addrs and state.detached == 2 and not state.memory
    with pytest.raises(UsageError, match="closed"):
        rt.infer({"images": x})


def test_dynamic_plan_resolves_shapes_from_the_input(fake_trt, tiny, tmp_path):
    state = fake_trt()
    with create_runtime("tensorrt", _dynamic_plan(tiny, tmp_path / "dyn.plan")) as rt:
        assert rt.inputs[0].shape == (1, 3, None, None) and not state.memory  # nothing to allocate yet
        for h, w in ((8, 8), (16, 12), (16, 12)):
            out = rt.infer({"images": _x(h, w)})
            assert out["z"].shape == (1, 5, h, w)
            np.testing.assert_allclose(out["y"], conv_sigmoid_reference(_x(h, w), tiny[1])[0], atol=1e-5)
        assert len(state.freed) == 3  # reallocated once (8x8 -> 16x12), not for the repeated size


def _dynamic_plan(tiny, plan):
    """A plan with a dynamic H/W profile (the builder refuses dynamic ONNX; other tools make such plans)."""
    build_plan(tiny[0], plan, "fp32", log=lambda m: None)
    data = _plan(plan)
    data["inputs"] = [["images", [1, 3, -1, -1]]]
    data["outputs"] = [["y", [1, 5, -1, -1]], ["z", [1, 5, -1, -1]]]
    data["onnx"] = base64.b64encode(_dynamic(tiny[0]).read_bytes()).decode()
    plan.write_text(json.dumps(data))
    return plan


def test_cuda_graph_is_recaptured_when_buffers_move(fake_trt, tiny, tmp_path):
    state = fake_trt()
    with create_runtime("tensorrt", _dynamic_plan(tiny, tmp_path / "dyn.plan"), cuda_graph=True) as rt:
        for h, w in ((8, 8), (8, 8), (16, 12), (16, 12)):
            out = rt.infer({"images": _x(h, w)})
            np.testing.assert_allclose(out["y"], conv_sigmoid_reference(_x(h, w), tiny[1])[0], atol=1e-5)
        assert state.executes == 4 and state.launches == 4  # two captures (one per size), four replays


def test_cuda_graph_captures_once_and_replays(fake_trt, tiny, tmp_path):
    state = fake_trt()
    build_plan(tiny[0], tmp_path / "g.plan", "fp16", log=lambda m: None)
    with create_runtime("tensorrt", tmp_path / "g.plan", cuda_graph=True) as rt:
        for seed in range(3):
            out = rt.infer({"images": _x(seed=seed)})
            ref = conv_sigmoid_reference(_x(seed=seed), tiny[1])[0]
            np.testing.assert_allclose(out["y"], ref, atol=1e-2)  # fp16 plan
            assert np.abs(out["y"] - ref).max() > 0
        assert state.executes == 2 and state.launches == 3  # warm-up + capture, then replays only
        assert rt.describe()["cuda_graph"] is True


def test_runtime_refuses_plans_and_options_it_cannot_use(fake_trt, tiny, tmp_path):
    fake_trt(version="8.6.2")
    build_plan(tiny[0], tmp_path / "old.plan", "fp16", log=lambda m: None)
    state = fake_trt(version="10.3.0")
    with pytest.raises(BundleError, match="TensorRT 10.3.0 cannot load plan old.plan.*edgepose build"):
        create_runtime("tensorrt", tmp_path / "old.plan")
    assert not state.ctx_stack and state.detached == 1
    with pytest.raises(BundleError, match="does not exist"):
        create_runtime("tensorrt", tmp_path / "none.plan")
    with pytest.raises(UsageError, match="no option 'threads'"):
        create_runtime("tensorrt", tmp_path / "old.plan", threads=2)


# ============================================== bundles ==================================================
def _cpu_bundle(path, onnx_path):
    manifest = {
        "model": {"name": "tiny", "family": "kapao"},
        "input": {"name": "images", "shape": [1, 3, 8, 8]},
        "outputs": [{"name": "y"}, {"name": "z"}],
        "decoder": {},
        "target": "jetson",
        "precision": "fp16",
        "runtime": {"name": "tensorrt"},
    }
    return write_bundle(path, manifest, {"model": onnx_path})


def test_fleet_bundle_holds_a_plan_per_device_and_picks_this_one(fake_trt, tiny, tmp_path):
    bundle = _cpu_bundle(tmp_path / "fleet", tiny[0])
    with pytest.raises(
        BundleError, match="has no TensorRT plan; build one on the device with: edgepose build"
    ):
        open_runtime(bundle)  # no TensorRT needed to say so
    fake_trt(gpu="Orin", version="8.6.2")
    bundle = build_bundle_plan(bundle.path, log=lambda m: None)
    fake_trt(gpu="NVIDIA GeForce RTX 3090", cc=(8, 6), version="10.3.0")
    bundle = build_bundle_plan(bundle.path, precision="fp32", log=lambda m: None)
    bundle = load_bundle(bundle.path)  # hashes of every artifact verified
    roles = sorted(plans_in(bundle.manifest))
    assert roles == ["plan:geforce-rtx-3090-sm86-trt10.3.0-fp32", "plan:orin-sm87-trt8.6.2-fp16"]
    assert bundle.has_artifact("model")  # the ONNX stays, for the next device
    with open_runtime(bundle, precision="fp16") as rt:  # on the RTX 3090 (the last fake installed)
        assert rt.model_path.name == "geforce-rtx-3090-sm86-trt10.3.0-fp32.plan"
        np.testing.assert_allclose(
            rt.infer({"images": _x()})["z"], conv_sigmoid_reference(_x(), tiny[1])[1], atol=1e-6
        )
    fake_trt(gpu="Orin", version="8.6.2")
    with open_runtime(bundle) as rt:
        assert rt.model_path.name == "orin-sm87-trt8.6.2-fp16.plan"
    fake_trt(gpu="Orin", version="10.3.0")
    with pytest.raises(
        BundleError, match="no TensorRT plan for this device.*it has plans for.*edgepose build"
    ):
        open_runtime(bundle)
    # rebuilding for the same device replaces its plan instead of adding one
    fake_trt(gpu="Orin", version="8.6.2")
    bundle = build_bundle_plan(bundle.path, log=lambda m: None)
    assert len(plans_in(bundle.manifest)) == 2 and len(bundle.manifest["artifacts"]) == 3


def test_build_needs_an_onnx_in_the_bundle(fake_trt, tmp_path):
    fake_trt()
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    manifest = {
        "model": {},
        "input": {},
        "outputs": [],
        "decoder": {},
        "target": "openvino",
        "precision": "fp32",
        "runtime": {"name": "openvino"},
    }
    bundle = write_bundle(tmp_path / "ov", manifest, {"ir": xml})
    with pytest.raises(BundleError, match="no ONNX model to build a TensorRT plan from"):
        build_bundle_plan(bundle, log=lambda m: None)
    with pytest.raises(BundleError, match="no TensorRT plan"):
        open_runtime(bundle, runtime="tensorrt")


def test_add_plan_keeps_the_bundle_atomic_and_verified(fake_trt, tiny, tmp_path):
    fake_trt()
    bundle = _cpu_bundle(tmp_path / "b", tiny[0])
    rec = build_plan(tiny[0], tmp_path / "p.plan", "fp16", log=lambda m: None)
    bundle = add_plan_to_bundle(bundle, tmp_path / "p.plan", rec)
    role = "plan:orin-sm87-trt8.6.2-fp16"
    assert bundle.manifest["tensorrt"]["plans"][role]["built"] == rec["built"]
    assert bundle.artifact(role).read_bytes() == (tmp_path / "p.plan").read_bytes()
    assert sorted(p.name for p in bundle.path.iterdir()) == [
        "edgepose.json",
        "orin-sm87-trt8.6.2-fp16.plan",
        "tiny.onnx",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temporary folder left


# ============================================ real hardware ==============================================
@pytest.mark.gpu
@pytest.mark.skipif(REAL_REASON is not None, reason="TensorRT/CUDA not available on this machine")
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_real_plan_matches_onnxruntime(tiny, tmp_path, precision, atol):
    rec = build_plan(
        tiny[0],
        tmp_path / "real.plan",
        precision,
        workspace_mib=256,
        timing_cache=tmp_path / "t.cache",
        log=lambda m: None,
    )
    assert rec["tensorrt"] and rec["compute_capability"]
    x = _x()
    with create_runtime("onnxruntime", tiny[0]) as ort_rt:
        ref = ort_rt.infer({"images": x})
    for graph in (False, True):
        with create_runtime("tensorrt", tmp_path / "real.plan", cuda_graph=graph) as rt:
            for _ in range(2):
                out = rt.infer({"images": x})
                for name in ("y", "z"):
                    np.testing.assert_allclose(out[name], ref[name], atol=atol)


@pytest.mark.gpu
@pytest.mark.skipif(REAL_REASON is not None, reason="TensorRT/CUDA not available on this machine")
def test_real_bundle_build_and_selection(tiny, tmp_path):
    bundle = build_bundle_plan(_cpu_bundle(tmp_path / "real", tiny[0]), precision="fp16", log=lambda m: None)
    with open_runtime(load_bundle(bundle.path)) as rt:
        out = rt.infer({"images": _x()})
    np.testing.assert_allclose(out["z"], conv_sigmoid_reference(_x(), tiny[1])[1], atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(REAL_REASON is not None, reason="TensorRT/CUDA not available on this machine")
def test_real_int8_qdq_bundle_builds_and_matches_its_onnxruntime_check(tmp_path):
    """What `edgepose export --target jetson --precision int8` promises: the Q/DQ ONNX checked here in ONNX
    Runtime is what TensorRT builds on the device, so both run the same quantized network."""
    pytest.importorskip("torch")
    from edgepose.export.pipeline import ExportOptions, export_model

    opts = ExportOptions(
        model="kapao-t",
        random_weights=True,
        imgsz="256",
        target="jetson",
        precision="int8",
        calib="synthetic",
        calib_size=16,
        output=tmp_path / "int8",
    )
    bundle = export_model(opts, log=lambda m: None)
    bundle = build_bundle_plan(bundle, precision="int8", log=lambda m: None)
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    with create_runtime("onnxruntime", bundle.artifact("model")) as ort_rt:
        ref = ort_rt.infer({"images": x})
    with open_runtime(load_bundle(bundle.path)) as rt:
        out = rt.infer({"images": x})
    for name, value in ref.items():
        scale = float(np.abs(value).max()) or 1.0
        assert float(np.abs(out[name] - value).max()) / scale < 0.05, name
