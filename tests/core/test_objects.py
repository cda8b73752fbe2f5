"""Objects beyond plain tensors are shown as what they are, checked against what
torch.load(weights_only=False) rebuilds from the same trusted file (built here with the real
libraries): numpy arrays, DTensor, torchao weights, torch.ao quantized modules, compiled
modules, parametrizations, standard-library values, shared containers."""

import collections
import datetime
import enum
import functools
import pathlib
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize
import torch.nn.utils.prune

from ckpt_viewer.core.analysis.check import check
from ckpt_viewer.core.analysis.diff import diff
from ckpt_viewer.core.listing import safe_pickle
from ckpt_viewer.core.listing.model import iter_nodes
from ckpt_viewer.core.listing.open import open_checkpoint
from ckpt_viewer.core.listing.summary import inspect_dict
from ckpt_viewer.core.listing.tree import SHARED_BY_VALUE
from ckpt_viewer.core.progress import run
from ckpt_viewer.core.values.read import read_array
from ckpt_viewer.core.values.torch_bridge import read_tensor
from ckpt_viewer.core.writing.export import ExportPlan, export


def saved(tmp_path, obj, name="obj.pt", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path, open_checkpoint(str(path)), torch.load(path, weights_only=False)


def node(checkpoint, key):
    found = checkpoint.find(key)
    assert found is not None, f"{key} missing; keys: {[n.key for n in iter_nodes(checkpoint.root)]}"
    return found


def same_tensor(ours, theirs: torch.Tensor):
    """Bit for bit, quantized tensors by their integers and quantizer."""
    assert tuple(ours.shape) == tuple(theirs.shape)
    assert ours.dtype == str(theirs.dtype).replace("torch.", "")
    got = read_tensor(ours)
    if theirs.is_quantized:
        assert torch.equal(got.int_repr(), theirs.int_repr())
        assert torch.equal(got.dequantize(), theirs.dequantize())
        return
    assert got.dtype == theirs.dtype
    assert got.reshape(-1).view(torch.uint8).equal(theirs.reshape(-1).view(torch.uint8))


def state_dict_listing(state_dict, prefix=""):
    """torch's state_dict flattened the way inspect names keys (tuples by index)."""
    out = {}
    for key, value in state_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, tuple):
            out.update(state_dict_listing({str(i): v for i, v in enumerate(value)}, name + "."))
        else:
            out[name] = value
    return out


def our_leaves(checkpoint):
    return {n.key: n for n in iter_nodes(checkpoint.root) if n.kind in ("tensor", "scalar")}


# --- numpy --------------------------------------------------------------------------------------

ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "fortran_int64": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3) - 3),
    "big_endian": np.arange(5, dtype=">f8") * -1.5,
    "bool": np.array([[True, False, True]]),
    "float16": np.linspace(-2, 2, 9).astype(np.float16),
    "uint8": np.arange(250, 256, dtype=np.uint8),
    "complex64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "zero_dim": np.array(3.25),
    "empty": np.zeros((0, 3), np.float32),
    "int16_3d": np.arange(24, dtype=np.int16).reshape(2, 3, 4),
}


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_arrays_are_tensors_with_their_values(tmp_path, protocol):
    _, checkpoint, loaded = saved(tmp_path, ARRAYS, pickle_protocol=protocol)
    listed = {t["key"]: t for t in inspect_dict(checkpoint)["tensors"]}
    for key, array in loaded.items():
        found = node(checkpoint, key)
        assert found.kind == "tensor" and found.type_name == "ndarray"
        expected_dtype = str(torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).dtype)
        assert found.tensor.dtype == expected_dtype.replace("torch.", "")
        assert list(found.tensor.shape) == list(array.shape) == listed[key]["shape"]
        values = read_array(found.tensor)
        assert values.dtype == array.dtype and values.shape == array.shape
        assert values.tobytes() == np.ascontiguousarray(array).tobytes()
        same_tensor(found.tensor, torch.from_numpy(array.astype(array.dtype.newbyteorder("="))))


def test_numpy_object_and_text_arrays_dtypes_and_scalars(tmp_path):
    obj = {
        "objects": np.array([1, "x", None], dtype=object),
        "text": np.array(["ab", "ü"]),
        "dtype": np.dtype("int16"),
        "scalar": np.float64(1.5),
        "bytes": np.array([b"hi"]),
    }
    _, checkpoint, loaded = saved(tmp_path, obj)
    objects = node(checkpoint, "objects")
    assert objects.kind == "list" and "[3] object" in objects.note
    assert [c.value for c in objects.children] == list(loaded["objects"])
    assert [c.value for c in node(checkpoint, "text").children] == list(loaded["text"])
    assert [c.value for c in node(checkpoint, "bytes").children] == list(loaded["bytes"])
    assert node(checkpoint, "dtype").value == str(loaded["dtype"]) == "int16"
    assert checkpoint.scalars()["scalar"] == loaded["scalar"]


@pytest.fixture(params=["record", "called"])
def subclass_route(request, monkeypatch):
    """torch._tensor._rebuild_from_type_v2 is kept as a record today; should the unpickler
    call its own builder for it (the inner wrapper call then becomes the placeholder and the
    state is set on it), the decoding must give the same view."""
    if request.param == "called":

        def rebuild_called(func, new_type, args, state):
            result = func(*args)
            if isinstance(result, safe_pickle.Placeholder):
                result.state = state
            return result

        monkeypatch.setitem(
            safe_pickle.ALLOWED, ("torch._tensor", "_rebuild_from_type_v2"), rebuild_called
        )
    return request.param


# --- DTensor ------------------------------------------------------------------------------------


@pytest.fixture
def process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/pg")
    yield
    dist.destroy_process_group()


def test_dtensor_global_shape_placements_mesh_and_local_shard(
    tmp_path, process_group, subclass_route
):
    """On a 1-rank mesh the file holds every DTensor whole: listed at its key, read and
    exported as the full tensor (what load_state_dict takes)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import (
        DTensor,
        Partial,
        Replicate,
        Shard,
        distribute_tensor,
    )

    mesh = DeviceMesh("cpu", [0])
    mesh_2d = DeviceMesh("cpu", [[0]], mesh_dim_names=("dp", "tp"))
    obj = {
        "sharded": distribute_tensor(torch.arange(8.0).reshape(4, 2), mesh, [Shard(0)]),
        "replicated": distribute_tensor(torch.ones(3, dtype=torch.bfloat16), mesh, [Replicate()]),
        "partial": DTensor.from_local(torch.full((2,), 3.0), mesh, [Partial()]),
        "two_d": distribute_tensor(torch.randn(2, 6), mesh_2d, [Shard(1), Replicate()]),
    }
    path, checkpoint, loaded = saved(tmp_path, obj)
    for key, dtensor in loaded.items():
        found = node(checkpoint, key)
        assert found.kind == "tensor" and found.type_name.endswith("DTensor")
        assert not found.children
        dtype = str(dtensor.dtype).replace("torch.", "")
        assert f"global shape {list(dtensor.shape)} {dtype}" in found.note
        assert "this file holds all of it" in found.note
        same_tensor(found.tensor, dtensor.full_tensor())
    assert "placements (Shard(dim=0))" in node(checkpoint, "sharded").note
    assert "placements (Replicate())" in node(checkpoint, "replicated").note
    assert "placements (Partial(sum))" in node(checkpoint, "partial").note
    assert "mesh [1] cpu" in node(checkpoint, "sharded").note
    assert (
        "placements (Shard(dim=1), Replicate()), mesh [1, 1] (dp, tp) cpu"
        in node(checkpoint, "two_d").note
    )
    listed = {t["key"]: t for t in inspect_dict(checkpoint)["tensors"]}
    assert list(listed) == list(obj)
    assert {k: (t["shape"], t["dtype"]) for k, t in listed.items()} == {
        k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in loaded.items()
    }
    out = tmp_path / "out.pt"
    run(export(checkpoint, ExportPlan(), str(out)))
    exported = torch.load(out, weights_only=True)
    assert list(exported) == list(obj)
    for key, dtensor in loaded.items():
        assert type(exported[key]) is torch.Tensor and torch.equal(
            exported[key], dtensor.full_tensor()
        )
    module = torch.nn.Module()
    module.register_buffer("sharded", torch.zeros(4, 2))
    module.load_state_dict({"sharded": exported["sharded"]})  # what `_local_tensor` was not


def rank_files(tmp_path, world_size=2):
    """Per-rank files of a 2-rank job, written one rank at a time in this process (torch's fake
    process group): each rank holds its shards as torch cuts them."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    full = torch.arange(15.0).reshape(5, 3)
    paths = []
    for rank in range(world_size):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
        try:
            mesh = init_device_mesh("cpu", (world_size,))

            def shard(dim, rank=rank, mesh=mesh):
                local = full.chunk(world_size, dim)[rank].clone()
                return DTensor.from_local(
                    local,
                    mesh,
                    [Shard(dim)],
                    run_check=False,
                    shape=full.shape,
                    stride=full.stride(),
                )

            obj = {
                "rows": shard(0),
                "cols": shard(1),
                "replicated": DTensor.from_local(
                    full.clone(), mesh, [Replicate()], run_check=False
                ),
                "partial": DTensor.from_local(
                    torch.full((2,), float(rank)), mesh, [Partial()], run_check=False
                ),
            }
            paths.append(str(tmp_path / f"rank{rank}.pt"))
            torch.save(obj, paths[-1])
        finally:
            dist.destroy_process_group()
    return full, paths


def test_dtensor_per_rank_file_says_which_part_it_holds(tmp_path):
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    from ckpt_viewer.core import CheckpointError

    full, paths = rank_files(tmp_path)
    for rank, path in enumerate(paths):
        loaded = torch.load(path, weights_only=False)
        checkpoint = open_checkpoint(path)
        assert [t["key"] for t in inspect_dict(checkpoint)["tensors"]] == list(loaded)
        for key, dim in (("rows", 0), ("cols", 1)):
            dtensor, found = loaded[key], node(checkpoint, key)
            assert found.kind == "tensor" and tuple(found.tensor.shape) == tuple(dtensor.shape)
            mesh = dtensor.device_mesh
            shape, offset = compute_local_shape_and_global_offset(dtensor.shape, mesh, [Shard(dim)])
            assert tuple(dtensor.to_local().shape) == tuple(shape)
            assert (
                f"rank {rank} holds its local shard {list(shape)} float32: "
                f"[{offset[dim]}:{offset[dim] + shape[dim]}] of {full.shape[dim]} along dim {dim}"
                in found.note
            )
            same_tensor(found.tensor.parts["local"], dtensor.to_local())
            with pytest.raises(CheckpointError, match="spread over its ranks' files"):
                read_tensor(found.tensor)
        assert "this file holds all of it" in node(checkpoint, "replicated").note
        same_tensor(node(checkpoint, "replicated").tensor, loaded["replicated"].to_local())
        assert "a partial sum" in node(checkpoint, "partial").note
        with pytest.raises(
            CheckpointError, match="'rows' is a DTensor of which this file holds only a part"
        ):
            run(export(checkpoint, ExportPlan(), str(tmp_path / "all.pt")))
        out = tmp_path / f"replicated{rank}.safetensors"
        run(export(checkpoint, ExportPlan(include=["replicated"], format="safetensors"), str(out)))
        from safetensors.torch import load_file

        assert torch.equal(load_file(out)["replicated"], full)
        findings = run(check(checkpoint)).findings
        assert not [f for f in findings if f.severity == "error"]  # each shard is read
    first, second = (open_checkpoint(p) for p in paths)
    across = run(diff(first, second))
    assert {t.key: t.status for t in across.tensors} == {
        "rows": "shard",
        "cols": "shard",
        "replicated": "identical",
        "partial": "shard",
    }
    same_rank = run(diff(second, open_checkpoint(paths[1])))
    assert same_rank.identical


# --- torchao ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        "Int8WeightOnlyConfig",
        "Float8WeightOnlyConfig",
        "Int8DynamicActivationInt8WeightConfig",
        "IntxWeightOnlyConfig",
        "IntxWeightOnlyConfig/group8",
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchao_weights_at_their_key_with_logical_shape_and_values(
    tmp_path, config, dtype, subclass_route
):
    """A torchao weight is the tensor at its key (logical shape and dtype); its values are its
    dequantize(), bit for bit; export writes those with --dtype and refuses without."""
    from safetensors.torch import load_file

    from ckpt_viewer.core import CheckpointError

    torchao_quantization = pytest.importorskip("torchao.quantization")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16)).to(dtype)
    name, _, group = config.partition("/")
    kwargs = {"granularity": torchao_quantization.PerGroup(8)} if group else {}
    torchao_quantization.quantize_(model, getattr(torchao_quantization, name)(**kwargs))
    _, checkpoint, loaded = saved(tmp_path, model.state_dict())
    weight = loaded["0.weight"]
    found = node(checkpoint, "0.weight")
    assert found.kind == "tensor" and found.type_name.endswith(type(weight).__name__)
    assert (tuple(found.tensor.shape), found.tensor.dtype) == (
        tuple(weight.shape),
        str(weight.dtype).replace("torch.", ""),
    )
    assert [t["key"] for t in inspect_dict(checkpoint)["tensors"]] == list(loaded)
    inner_names, _ = weight.__tensor_flatten__()
    assert set(found.tensor.parts) == set(inner_names)
    for inner in inner_names:
        same_tensor(found.tensor.parts[inner], getattr(weight, inner))
    same_tensor(found.tensor, weight.dequantize())
    same_tensor(node(checkpoint, "0.bias").tensor, loaded["0.bias"])
    with pytest.raises(CheckpointError, match="'0.weight' is a quantized .*--dtype float32"):
        run(
            export(checkpoint, ExportPlan(format="safetensors"), str(tmp_path / "keep.safetensors"))
        )
    for target in ("float32", "bfloat16"):
        out = tmp_path / f"{target}.safetensors"
        run(export(checkpoint, ExportPlan(dtype=target, format="safetensors"), str(out)))
        written = load_file(out)
        expected = weight.dequantize().to(getattr(torch, target))
        assert written["0.weight"].view(torch.uint8).equal(expected.view(torch.uint8))
    plain = torch.nn.Sequential(torch.nn.Linear(32, 16))
    plain.load_state_dict(load_file(tmp_path / "float32.safetensors"))


# --- torch.ao quantized modules, compiled modules, parametrizations -----------------------------


class StaticQuantized(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.fc = torch.nn.Linear(12, 2)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc(self.conv(self.quant(x)).flatten(1)))


def static_quantized():
    torch.manual_seed(0)
    model = StaticQuantized().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(4, 2, 4, 4))
    return torch.ao.quantization.convert(prepared)


def dynamic_quantized():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class ManyQuantized(torch.nn.Module):
    """Quantized modules of every family eager mode converts, fused ones and an embedding."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1d, self.conv3d = nn.Conv1d(2, 2, 1), nn.Conv3d(2, 2, 1)
        self.conv, self.bn, self.relu = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.transposed = nn.ConvTranspose2d(4, 4, 1)
        self.norms = nn.Sequential(
            nn.LayerNorm([4, 2, 2]), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)
        )
        self.activations = nn.Sequential(nn.Hardswish(), nn.ELU(), nn.LeakyReLU())
        self.add = torch.ao.nn.quantized.FloatFunctional()
        self.fc, self.fc_relu = nn.Linear(16, 3), nn.ReLU()
        self.embedding = nn.Embedding(10, 4)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.activations(
            self.norms(self.transposed(self.relu(self.bn(self.conv(self.quant(x))))))
        )
        return self.dequant(self.fc_relu(self.fc(self.add.add(x, x).flatten(1))))


def many_quantized():
    torch.manual_seed(0)
    model = torch.ao.quantization.fuse_modules(
        ManyQuantized().eval(), [["conv", "bn", "relu"], ["fc", "fc_relu"]]
    )
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    model.transposed.qconfig = torch.ao.quantization.get_default_qconfig("qnnpack")
    model.embedding.qconfig = torch.ao.quantization.float_qparams_weight_only_qconfig
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(2, 2, 4, 4))
    return torch.ao.quantization.convert(prepared)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("build", [static_quantized, dynamic_quantized, many_quantized])
def test_quantized_modules_listed_under_state_dict_names(tmp_path, build):
    model = build()
    # torch's own state_dict of the model saved (a loaded quantized Conv cannot give one)
    _, checkpoint, _ = saved(tmp_path, model)
    expected = state_dict_listing(model.state_dict())
    ours = our_leaves(checkpoint)
    assert list(ours) == list(expected)
    _, from_state_dict, _ = saved(tmp_path, model.state_dict(), "state_dict.pt")
    assert list(our_leaves(from_state_dict)) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and (
            value.dim() > 0 or value.is_quantized or ours[key].kind == "tensor"
        ):
            same_tensor(ours[key].tensor, value)
        elif isinstance(value, torch.Tensor):  # scale/zero_point: torch.tensor(python number)
            assert ours[key].value == value.item()
        else:  # the packed params' dtype
            assert ours[key].value == str(value).replace("torch.", "")


def test_compiled_module_keeps_orig_mod_prefix(tmp_path):
    model = torch.compile(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3)))
    _, checkpoint, loaded = saved(tmp_path, model)
    expected = loaded.state_dict()
    assert [t["key"] for t in inspect_dict(checkpoint)["tensors"]] == list(expected)
    for key, value in expected.items():
        same_tensor(node(checkpoint, key).tensor, value)


class Symmetric(torch.nn.Module):
    def forward(self, x):
        return x.triu() + x.triu(1).T


class WithExtraState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def get_extra_state(self):
        return {"note": "hi", "path": pathlib.PurePosixPath("/x"), "step": 3}

    def set_extra_state(self, state):
        pass


def test_parametrizations_pruning_and_extra_state_keys(tmp_path):
    linear = torch.nn.Linear(3, 3)
    torch.nn.utils.parametrize.register_parametrization(linear, "weight", Symmetric())
    normed = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 2))
    pruned = torch.nn.Linear(3, 3)
    torch.nn.utils.prune.l1_unstructured(pruned, "weight", 0.5)
    extra = WithExtraState()
    obj = {
        "param": linear.state_dict(),
        "norm": normed.state_dict(),
        "pruned": pruned.state_dict(),
        "extra": extra.state_dict(),
        "pruned_model": pruned,
    }
    _, checkpoint, loaded = saved(tmp_path, obj)
    expected = {
        f"{part}.{key}": value
        for part in ("param", "norm", "pruned", "extra")
        for key, value in loaded[part].items()
    }
    expected.update(
        {f"pruned_model.{k}": v for k, v in loaded["pruned_model"].state_dict().items()}
    )
    assert "param.parametrizations.weight.original" in expected
    assert "pruned_model.weight_mask" in expected
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            same_tensor(node(checkpoint, key).tensor, value)
    tensors = {t["key"] for t in inspect_dict(checkpoint)["tensors"]}
    assert tensors == {k for k, v in expected.items() if isinstance(v, torch.Tensor)}
    assert node(checkpoint, "extra._extra_state.path").value == "/x"
    assert node(checkpoint, "extra._extra_state.step").value == 3


# --- standard library values --------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


def scaled(value, factor=2):
    return value * factor


def test_python_values_shown_as_a_python_user_knows_them(tmp_path):
    sys.set_int_max_str_digits(0)
    obj = {
        "posix": pathlib.PurePosixPath("/data/run1/ckpt.pt"),
        "relative": pathlib.Path("a/b"),
        "windows": pathlib.PureWindowsPath("C:/models/x.bin"),
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
        "utc": datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.timezone.utc),
        "day": datetime.date(1999, 12, 31),
        "clock": datetime.time(23, 59, 58, 7),
        "span": datetime.timedelta(days=2, seconds=5, microseconds=3),
        "partial": functools.partial(scaled, 3, factor=4),
        "color": Color.RED,
        "point": Point(1, 2),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "device": torch.device("cuda", 1),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "bytes": b"ab\x00",
        "complex": complex(1, -2),
        "nan": float("nan"),
        "inf": float("-inf"),
        "huge": 10**100000 + 7,
        "negative": -(7**900),
    }
    _, checkpoint, loaded = saved(tmp_path, obj)
    for key in ("posix", "relative", "windows"):
        assert node(checkpoint, key).value == str(loaded[key])
    for key in ("when", "utc", "day", "clock"):
        assert node(checkpoint, key).value == loaded[key].isoformat()
    assert node(checkpoint, "span").value == str(loaded["span"])
    assert node(checkpoint, "partial").note == "partial(test_objects.scaled, 3, factor=4)" or node(
        checkpoint, "partial"
    ).note.endswith(".scaled, 3, factor=4)")
    assert node(checkpoint, "color").note == "Color(1)" and loaded["color"].value == 1
    assert node(checkpoint, "point").note == "Point(1, 2)"
    assert [c.value for c in node(checkpoint, "size").children] == list(loaded["size"])
    assert node(checkpoint, "dtype").value == "float16"
    assert node(checkpoint, "device").value == str(loaded["device"])
    assert {c.value for c in node(checkpoint, "set").children} == loaded["set"]
    assert node(checkpoint, "bytes").value == loaded["bytes"]
    assert node(checkpoint, "complex").value == loaded["complex"]
    scalars = checkpoint.scalars()
    assert str(scalars["nan"]) == "nan" and scalars["inf"] == float("-inf")
    for key in ("huge", "negative"):
        text = str(loaded[key])
        digits = len(text.lstrip("-"))
        head = text[:41] if text.startswith("-") else text[:40]
        assert node(checkpoint, key).note == f"{head}... ({digits} digits)"
    assert node(checkpoint, "negative").value == loaded["negative"]  # still a number
    assert node(checkpoint, "huge").value == 10**100_000 + 7  # a number still (strict JSON)


def test_enum_member_pickled_by_name(tmp_path):
    """Some Python versions pickle enum members as getattr(EnumClass, 'NAME')."""
    path = tmp_path / "enum.pkl"
    path.write_bytes(
        b"\x80\x02}X\x01\x00\x00\x00ecbuiltins\ngetattr\nc__main__\nColor\n"
        b"X\x03\x00\x00\x00RED\x86Rs."
    )
    found = node(open_checkpoint(str(path)), "e")
    assert found.value == "Color.RED" and found.note == "getattr(__main__.Color, 'RED')"


# --- shared objects -----------------------------------------------------------------------------


def test_shared_small_containers_shown_by_value_large_ones_once(tmp_path):
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.Adam(params[:1], lr=1e-3)
    optimizer.add_param_group({"params": params[1:]})
    state = optimizer.state_dict()
    state["param_groups"][1]["betas"] = state["param_groups"][0]["betas"]
    big = {f"k{i}": i for i in range(SHARED_BY_VALUE * 2)}
    _, checkpoint, loaded = saved(tmp_path, {"opt": state, "a": big, "b": big})
    assert loaded["opt"]["param_groups"][1]["betas"] is loaded["opt"]["param_groups"][0]["betas"]
    (opt,) = inspect_dict(checkpoint)["optimizers"]
    assert [g["betas"] for g in opt["param_groups"]] == [[0.9, 0.999], [0.9, 0.999]]
    shared = node(checkpoint, "b")
    assert shared.kind == "ref" and shared.note == "shared with a, shown once"


class SharedBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        self.again = self.block


def test_shared_submodule_listed_under_both_names_like_state_dict(tmp_path):
    _, checkpoint, loaded = saved(tmp_path, SharedBlocks())
    assert [t["key"] for t in inspect_dict(checkpoint)["tensors"]] == list(loaded.state_dict())
    assert node(checkpoint, "again.0.weight").shared_with == "block.0.weight"
    assert inspect_dict(checkpoint)["total_params"] == 10


def test_hostile_repetition_stays_small(tmp_path):
    """Each level holds the previous one twice: 2**60 leaves by value; shown in a few nodes."""
    level = (0.5, 0.25)
    for _ in range(60):
        level = (level, level)
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps({"x": level}, protocol=2))
    checkpoint = open_checkpoint(str(path))
    assert sum(1 for _ in iter_nodes(checkpoint.root)) < 5000


def test_shared_numpy_array_is_one_storage(tmp_path):
    array = np.arange(4, dtype=np.float32)
    _, checkpoint, _ = saved(tmp_path, {"a": array, "b": array})
    assert node(checkpoint, "b").kind == "tensor" and node(checkpoint, "b").shared_with == "a"
    assert inspect_dict(checkpoint)["total_params"] == 4


# --- malformed records --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"cnumpy.core.multiarray\n_reconstruct\n)R(K\x01(J\xff\xff\xff\xfftK\x00K\x00K\x00tb.",
        b"cbuiltins\ngetattr\nc__main__\nColor\nX\x03\x00\x00\x00a.b\x86R.",
        (
            b"cnumpy.core.multiarray\n_reconstruct\n)R(K\x01(K\x02tcnumpy\ndtype\nX\x02\x00\x00\x00f4"
            b"\x85R\x89C\x03abctb."
        ),
        b"ctorch._tensor\n_rebuild_from_type_v2\n(K\x01K\x02K\x03K\x04tR.",
        b"ctorch.distributed.tensor\nDTensor\n)R}b.",
        b"cdatetime\ndatetime\nC\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x85R.",
        b"cpathlib\nPosixPath\nK\x01\x85R.",
    ],
)
def test_malformed_known_objects_fall_back_to_generic(tmp_path, payload):
    path = tmp_path / "odd.pkl"
    path.write_bytes(b"\x80\x02" + payload)
    checkpoint = open_checkpoint(str(path))
    assert checkpoint.tensors() == []


class TaggedTensor(torch.Tensor):
    pass


def test_plain_tensor_subclass_is_a_tensor_with_its_attributes(tmp_path):
    tagged = torch.arange(6.0).reshape(2, 3).as_subclass(TaggedTensor)
    tagged.tag = "calibrated"
    _, checkpoint, loaded = saved(tmp_path, {"t": tagged})
    found = node(checkpoint, "t")
    assert found.kind == "tensor" and found.type_name.endswith("TaggedTensor")
    same_tensor(found.tensor, loaded["t"].as_subclass(torch.Tensor))
    assert node(checkpoint, "t.tag").value == loaded["t"].tag


def test_torchao_weights_count_their_own_elements(tmp_path):
    """Model parameters are what model.parameters() counts (a quantized weight's numel, not
    its qdata + scale + zero_point); bytes are what the file stores."""
    from ckpt_viewer.core.listing.summary import totals

    torchao_quantization = pytest.importorskip("torchao.quantization")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    torchao_quantization.quantize_(model, torchao_quantization.Int8WeightOnlyConfig())
    expected = sum(p.numel() for p in model.parameters())
    _, checkpoint, loaded = saved(tmp_path, model.state_dict())
    counted = totals(checkpoint)
    assert counted.split["model"] == counted.elements == expected == 16 * 32 + 16
    weight = loaded["0.weight"]
    stored = sum(
        getattr(weight, name).untyped_storage().nbytes() for name in weight.__tensor_flatten__()[0]
    )
    assert counted.bytes == stored + loaded["0.bias"].untyped_storage().nbytes()
