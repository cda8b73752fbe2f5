"""A generated corpus of hostile and damaged files (nothing binary is committed).

Each builder takes (folder, sentinel) and returns a path. `expect` says what opening must do:
"error" (a one-line CheckpointError / exit 2) or "opens" (listed as inert data, maybe with
warnings). In every case the sentinel file must not exist afterwards: no code from the file ran.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import zipfile

import torch

import builders
from builders import Call


def touch(sentinel):
    return f"touch {sentinel}"


def zip_archive(
    path, data_pkl: bytes, records=None, version=b"3\n", byteorder=b"little", extra_entries=()
):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        if byteorder is not None:
            zf.writestr("archive/byteorder", byteorder)
        for name, data in (records or {}).items():
            zf.writestr(f"archive/data/{name}", data)
        for name, data in extra_entries:
            zf.writestr(name, data)
        zf.writestr("archive/version", version)
    return str(path)


def tensor_pickle(shape, stride, offset=0, numel=4, dtype="float32", where="cpu"):
    """A data.pkl with one tensor whose geometry we choose (torch's own globals)."""
    from ckpt_viewer.core.writing.torch_pickle import TensorEntry, state_dict_pickle

    return state_dict_pickle([TensorEntry("w", "0", dtype, numel, offset, shape, stride)], where)


def payload_file(func, make_args, legacy=False, nest=0):
    """A real checkpoint with a call of func(*make_args(sentinel)) hidden in it."""

    def build(folder, sentinel):
        payload = Call(func, *make_args(sentinel))
        for _ in range(nest):
            payload = {"deeper": [payload]}
        return builders.save(
            {"model": builders.tiny_model().state_dict(), "x": payload},
            folder / f"{func.__name__}.pth",
            _use_new_zipfile_serialization=not legacy,
        )

    return build


def raw_pickle_file(make_bytes, name):
    def build(folder, sentinel):
        return zip_archive(folder / f"{name}.pth", make_bytes(str(sentinel)))

    return build


def _string(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def inst_opcode(s):
    return b"(S'" + touch(s).encode() + b"'\nios\nsystem\n."


def obj_opcode(s):
    return b"(cos\nsystem\nS'" + touch(s).encode() + b"'\no."


def ext_opcode(s):
    return b"\x80\x02\x82\x01."


def build_on_global(s):
    return b"\x80\x02cos\nsystem\n}" + _string("x") + b"K\x01sb."


def stack_global_from_memo(s):
    return (
        b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93"
        + b"\x8c"
        + bytes([len(touch(s))])
        + touch(s).encode()
        + b"\x85R."
    )


def getattr_chain(s):
    return (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n"
        + _string("os")
        + b"\x85R"
        + _string("system")
        + b"\x86R"
        + _string(touch(s))
        + b"\x85R."
    )


def truncated(kind, fraction):
    def build(folder, sentinel):
        source = (
            builders.training_checkpoint(folder / "src.pth", legacy=kind == "legacy")
            if kind != "safetensors"
            else builders.safetensors_file(folder / "src.safetensors")
        )
        data = open(source, "rb").read()
        out = folder / f"cut-{kind}-{fraction}.pth"
        out.write_bytes(data[: max(1, int(len(data) * fraction))])
        return str(out)

    return build


def rewritten(src, out, edit) -> str:
    """Copy a zip archive with its {name: bytes} entries passed through edit()."""
    with zipfile.ZipFile(src) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    with zipfile.ZipFile(out, "w") as zf:
        for entry, data in edit(entries).items():
            zf.writestr(entry, data)
    return str(out)


def patched(edit, name):
    """A valid torch zip checkpoint with its entries edited."""

    def build(folder, sentinel):
        src = builders.save({"w": torch.arange(16.0)}, folder / "valid.pt")
        return rewritten(src, folder / f"{name}.pth", edit)

    return build


def _replace(suffix, value):
    def edit(entries):
        return {k: (value if k.endswith(suffix) else v) for k, v in entries.items()}

    return edit


def bad_crc(folder, sentinel):
    path = builders.save({"w": torch.arange(16.0)}, folder / "crc.pth")
    data = bytearray(open(path, "rb").read())
    at = data.index(b"_rebuild_tensor")
    data[at] ^= 0x01  # inside data.pkl: its CRC-32 no longer matches
    (folder / "crc.pth").write_bytes(bytes(data))
    return path


def safetensors_raw(name, header: bytes, data=b"", length=None):
    def build(folder, sentinel):
        out = folder / f"{name}.safetensors"
        out.write_bytes(
            struct.pack("<Q", len(header) if length is None else length) + header + data
        )
        return str(out)

    return build


def st_header(entries: dict) -> bytes:
    return json.dumps(entries).encode()


def deep_nesting(folder, sentinel):
    depth = 100_000
    return zip_archive(folder / "deep.pth", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")


def reference_bomb(folder, sentinel):
    inner = ["x" * 10]
    for _ in range(10):
        inner = [inner] * 10
    return builders.save({"bomb": inner}, folder / "bomb.pth")


def zip_bomb(folder, sentinel):
    out = folder / "zipbomb.pth"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + _string("a" * (300 << 20)) + b".")
        zf.writestr("archive/version", b"3\n")
    return str(out)


def disguised(content: bytes, name):
    def build(folder, sentinel):
        out = folder / name
        out.write_bytes(content)
        return str(out)

    return build


def npy(header: bytes, data: bytes = bytes(64)) -> bytes:
    """An .npy file with this header (version 1.0)."""
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def npz_with_object_array(folder, sentinel):
    """An npz whose object record pickles a call (numpy.load(allow_pickle=True) would run it)."""
    out = folder / "obj.npz"
    call = pickle.dumps(Call(os.system, touch(sentinel)), protocol=2)
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(
            "w.npy", npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", bytes(16))
        )
        zf.writestr("o.npy", npy(header, call))
    return str(out)


def protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads here are < 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def onnx_external_escape(folder, sentinel):
    """An ONNX model whose one initializer's external data is '../' outside its folder."""
    location = protobuf_field(1, b"location") + protobuf_field(2, b"../outside.bin")
    tensor = b"\x08\x04\x10\x01" + protobuf_field(8, b"w") + protobuf_field(13, location)
    model = b"\x08\x08" + protobuf_field(7, protobuf_field(5, tensor + b"\x70\x01"))
    (folder.parent / "outside.bin").write_bytes(bytes(16))
    out = folder / "escape.onnx"
    out.write_bytes(model)
    return str(out)


def keras_h5_lambda_and_links(folder, sentinel):
    """A legacy Keras .h5 whose model_config has a Lambda layer (marshalled code that would
    touch the sentinel if Keras ran it), an external link and a virtual dataset pointing at
    another file."""
    import base64
    import marshal

    import h5py
    import numpy as np

    code = compile(f"import os; os.system({touch(sentinel)!r})", "<lambda>", "exec")
    function = base64.b64encode(marshal.dumps(code)).decode()
    layer = {"class_name": "Lambda", "config": {"name": "lam", "function": [function, None, None]}}
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [layer]}}
    other = folder / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.arange(3))
    out = folder / "lambda.h5"
    with h5py.File(out, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.create_dataset("model_weights/lam/w", data=np.arange(4.0))
        f["model_weights/ext"] = h5py.ExternalLink(str(other), "/secret")
        layout = h5py.VirtualLayout(shape=(3,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(other), "secret", shape=(3,))
        f.create_virtual_dataset("virtual", layout)
    return str(out)


def keras_archive_escape(folder, sentinel):
    """A .keras zip whose model.weights.h5 is deflated and names a path outside."""
    out = folder / "bad.keras"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Lambda", "config": {}}))
        zf.writestr("../model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))
    return str(out)


def duplicate_data_pkl(folder, sentinel):
    import warnings

    good = pickle.dumps({"a": 1}, protocol=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zip_archive(folder / "dup.pth", good, extra_entries=[("archive/data.pkl", good)])


def big_endian(folder, sentinel):
    """A genuine big-endian archive: bytes swapped, byteorder says so."""

    def swap(entries):
        for name in entries:
            if name.endswith("/data/0"):
                entries[name] = (
                    torch.frombuffer(bytearray(entries[name]), dtype=torch.float32)
                    .numpy()
                    .byteswap()
                    .tobytes()
                )
            if name.endswith("/byteorder"):
                entries[name] = b"big"
        return entries

    return rewritten(
        builders.save({"w": torch.arange(8.0)}, folder / "le.pt"), folder / "big.pth", swap
    )


def compressed_records(folder, sentinel):
    src = builders.save({"w": torch.arange(100.0)}, folder / "c.pt")
    out = folder / "compressed.pth"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(out, "w") as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return str(out)


def legacy_huge_storage(folder, sentinel):
    path = builders.save(
        {"w": torch.zeros(4)}, folder / "l.pt", _use_new_zipfile_serialization=False
    )
    data = bytearray(open(path, "rb").read())
    data[-24:-16] = struct.pack("<q", 2**36)
    out = folder / "legacy-huge.pth"
    out.write_bytes(bytes(data))
    return str(out)


def odd_keys(folder, sentinel):
    return builders.save(
        {"nul\x00key": torch.ones(1), "surrogate\ud800": torch.ones(1), "tab\tand\nnewline": 1},
        folder / "keys.pth",
    )


def torchscript_payload(folder, sentinel):
    jit = builders.torchscript_file(folder / "script.pt")
    payload = pickle.dumps(Call(os.system, touch(sentinel)), protocol=2)
    return rewritten(jit, folder / "script-evil.pt", _replace("/data.pkl", payload))


def lightning_payload(folder, sentinel):
    return builders.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "epoch": 1,
            "hyper_parameters": {"lr": 0.1, "callback": Call(os.system, touch(sentinel))},
        },
        folder / "evil.ckpt",
    )


def empty_directory(folder, sentinel):
    out = folder / "empty-dir"
    out.mkdir()
    return str(out)


def expanded_600m(folder, sentinel):
    """1.5 KB on disk, 600 million elements when materialised."""
    return builders.save(
        {"x": torch.ones(1).expand(600_000_000), "m": torch.ones(1).expand(30_000, 20_000)},
        folder / "expand.pt",
    )


def shared_objects(folder, sentinel):
    """A few hundred KB of pickle referencing one large string and list from thousands of places."""
    text, items = "A" * 100_000, ["B" * 1000] * 20
    return builders.save(
        {"s": {f"k{i}": text for i in range(8000)}, "l": {f"l{i}": items for i in range(8000)}},
        folder / "shared.pt",
    )


def shared_long_list(folder, sentinel):
    """750 KB: one list of 200,000 numbers referenced from 20,000 keys."""
    numbers = [1] * 200_000
    return builders.save({f"k{i}": numbers for i in range(20_000)}, folder / "shared-list.pt")


def archive_comment(comment: bytes, name):
    """A valid checkpoint with a zip archive comment (torch reads it; one holding a fake
    end-of-directory record it does not)."""

    def build(folder, sentinel):
        path = builders.save({"w": torch.arange(4.0)}, folder / f"{name}.pt")
        with zipfile.ZipFile(path, "a") as zf:
            zf.comment = comment
        return path

    return build


def deep_dotted_key(folder, sentinel):
    return builders.save({".".join(["a"] * 100_000): torch.ones(2)}, folder / "dotted.pt")


def huge_integer(folder, sentinel):
    return builders.save({"n": 10**100_000, "w": torch.ones(1)}, folder / "bigint.pt")


def markup_and_controls(folder, sentinel):
    evil = "<h1>big</h1><img src=x>\r\x1b[2K\nintact: forged\u202e"
    return builders.save({evil: torch.ones(2), "s": evil}, folder / "markup.pt")


def st_deep_dotted_key(folder, sentinel):
    header = json.dumps({".".join(["a"] * 100_000): ST_OK}).encode()
    out = folder / "dotted.safetensors"
    out.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return str(out)


ST_OK = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORPUS = {
    # code that would run under plain pickle / torch.load(weights_only=False)
    "os_system": (payload_file(os.system, lambda s: (touch(s),)), "opens"),
    "eval": (payload_file(eval, lambda s: (f"open({str(s)!r}, 'w')",)), "opens"),
    "exec": (payload_file(exec, lambda s: (f"open({str(s)!r}, 'w')",)), "opens"),
    "subprocess": (payload_file(subprocess.call, lambda s: (["touch", str(s)],)), "opens"),
    "nested_deep_in_dicts": (payload_file(os.system, lambda s: (touch(s),), nest=40), "opens"),
    "legacy_format_payload": (payload_file(os.system, lambda s: (touch(s),), legacy=True), "opens"),
    "importlib": (payload_file(__import__("importlib").import_module, lambda s: ("os",)), "opens"),
    "getattr_chain": (raw_pickle_file(getattr_chain, "getattr"), "opens"),  # shown as code
    "inst_opcode": (raw_pickle_file(inst_opcode, "inst"), "opens"),
    "obj_opcode": (raw_pickle_file(obj_opcode, "obj"), "opens"),
    "ext_opcode": (raw_pickle_file(ext_opcode, "ext"), "error"),
    "build_on_global": (raw_pickle_file(build_on_global, "build"), "error"),
    "stack_global_from_memo": (raw_pickle_file(stack_global_from_memo, "stackglobal"), "opens"),
    "torchscript_payload": (torchscript_payload, "opens"),
    "lightning_hparams_payload": (lightning_payload, "opens"),
    # damaged archives
    "truncated_zip_10": (truncated("zip", 0.1), "error"),
    "truncated_zip_50": (truncated("zip", 0.5), "error"),
    "truncated_zip_99": (truncated("zip", 0.99), "error"),
    "truncated_legacy_50": (truncated("legacy", 0.5), "error"),
    "truncated_legacy_99": (truncated("legacy", 0.99), "error"),
    "truncated_safetensors": (truncated("safetensors", 0.9), "error"),
    # torch never checks CRC-32 on read: the file opens as torch reads it, with a warning
    "bad_crc_data_pkl": (bad_crc, "opens"),
    "missing_data_pkl": (
        patched(lambda e: {k: v for k, v in e.items() if not k.endswith("data.pkl")}, "nodata"),
        "error",
    ),
    "storage_shorter_than_tensor": (patched(_replace("/data/0", b"\x00" * 8), "short"), "error"),
    "tensor_outside_storage": (
        lambda f, s: zip_archive(f / "oob.pth", tensor_pickle((4,), (1,), 8), {"0": b"\x00" * 16}),
        "error",
    ),
    "negative_size": (
        lambda f, s: zip_archive(f / "neg.pth", tensor_pickle((-1,), (1,)), {"0": b"\x00" * 16}),
        "error",
    ),
    "absurd_size": (
        lambda f, s: zip_archive(
            f / "absurd.pth", tensor_pickle((2**40, 2**20), (2**20, 1)), {"0": b"\x00" * 16}
        ),
        "error",
    ),
    "negative_stride": (
        lambda f, s: zip_archive(
            f / "negstride.pth", tensor_pickle((4,), (-1,), 3), {"0": b"\x00" * 16}
        ),
        "error",
    ),
    "two_data_pkl": (duplicate_data_pkl, "error"),
    "version_999": (patched(_replace("/version", b"999\n"), "v999"), "error"),
    "byteorder_middle": (patched(_replace("/byteorder", b"middle"), "middle"), "error"),
    "byteorder_big": (big_endian, "opens"),
    "compressed_records": (compressed_records, "opens"),
    "zip_bomb_data_pkl": (zip_bomb, "error"),
    "legacy_storage_2_36": (legacy_huge_storage, "error"),
    "deep_nesting_100k": (deep_nesting, "opens"),
    "reference_bomb": (reference_bomb, "opens"),
    "odd_keys": (odd_keys, "opens"),
    "expanded_600m_elements": (expanded_600m, "opens"),
    "shared_objects_repeated": (shared_objects, "opens"),
    "shared_list_repeated": (shared_long_list, "opens"),
    "archive_comment": (archive_comment(b"x" * 60_000, "comment"), "opens"),
    "archive_comment_fake_end_record": (
        archive_comment(b"PK\x05\x06" + bytes(18) + b"tail", "fake-eocd"),
        "error",
    ),
    "key_of_100k_segments": (deep_dotted_key, "opens"),
    "integer_10_pow_100000": (huge_integer, "opens"),
    "markup_and_control_keys": (markup_and_controls, "opens"),
    "st_key_of_100k_segments": (st_deep_dotted_key, "opens"),
    "st_gap_between_tensors": (
        safetensors_raw("gap", st_header({"a": {**ST_OK, "data_offsets": [4, 12]}}), bytes(12)),
        "error",
    ),
    "st_trailing_bytes": (safetensors_raw("trail", st_header({"a": ST_OK}), bytes(9)), "error"),
    "st_nan_in_header": (
        safetensors_raw(
            "nan",
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": NaN}}',
            bytes(8),
        ),
        "error",
    ),
    "st_padded_header": (
        safetensors_raw("padded", st_header({"a": ST_OK}) + b"      ", bytes(8)),
        "opens",
    ),
    # safetensors
    "st_huge_header": (safetensors_raw("huge", b"{}", length=2**62), "error"),
    "st_overlap": (
        safetensors_raw(
            "overlap", st_header({"a": ST_OK, "b": {**ST_OK, "data_offsets": [4, 12]}}), bytes(12)
        ),
        "error",
    ),
    "st_out_of_range": (
        safetensors_raw("range", st_header({"a": {**ST_OK, "data_offsets": [0, 8000]}}), bytes(8)),
        "error",
    ),
    "st_bad_dtype": (
        safetensors_raw("dtype", st_header({"a": {**ST_OK, "dtype": "F128"}}), bytes(8)),
        "error",
    ),
    "st_non_utf8_key": (
        safetensors_raw(
            "utf8",
            b'{"\xff\xfe": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
            bytes(8),
        ),
        "error",
    ),
    "st_duplicate_keys": (
        safetensors_raw(
            "dup",
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
            b' "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
            bytes(8),
        ),
        "opens",
    ),
    "st_shape_mismatch": (
        safetensors_raw("shape", st_header({"a": {**ST_OK, "shape": [3]}}), bytes(8)),
        "error",
    ),
    # not checkpoints at all
    "onnx_as_pth": (
        disguised(b"\x08\x07\x12\x07pytorch\x1a\x052.4.0" + bytes(64), "model.onnx.pth"),
        "error",
    ),
    # numpy: read by our header parser, never with allow_pickle
    "npy_lying_shape": (
        disguised(
            npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (10**12,), }"), "big.npy"
        ),
        "error",
    ),
    "npy_header_is_code": (
        disguised(npy(b"__import__('os').system('touch SENTINEL')"), "code.npy"),
        "error",
    ),
    "npy_object_array": (
        disguised(npy(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), "obj.npy"),
        "opens",
    ),
    "npz_object_array": (npz_with_object_array, "opens"),
    "onnx_external_escape": (onnx_external_escape, "error"),
    "keras_h5_lambda_and_links": (keras_h5_lambda_and_links, "opens"),
    "keras_archive_deflated": (keras_archive_escape, "error"),
    "flax_msgpack_lying_length": (
        disguised(b"\x81\xa6params\x81\xa1w\xc9\xff\xff\xff\xf0\x01" + bytes(64), "f.msgpack"),
        "error",
    ),
    "hdf5_as_pth": (disguised(b"\x89HDF\r\n\x1a\n" + bytes(512), "model.h5.pth"), "error"),
    "text_as_pth": (disguised(b"this is a README, not weights\n" * 10, "readme.pth"), "error"),
    "random_bytes": (
        disguised(bytes((i * 7919 + 13) % 256 for i in range(4096)), "random.pth"),
        "error",
    ),
    "empty_file": (disguised(b"", "empty.pth"), "error"),
    "empty_directory": (empty_directory, "error"),
}
