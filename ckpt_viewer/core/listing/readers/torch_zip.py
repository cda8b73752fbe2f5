"""torch.save zip archives (and TorchScript archives, read as data): directory + data.pkl.

Records are looked up the way torch's PyTorchFileReader does: under the folder named by the
first entry, by UTF-8 name, ignoring ASCII case. Everything torch checks before it would load
the file is checked here too (every entry inside that folder, the version record, the exact
byteorder text, each storage record's exact size)."""

from __future__ import annotations

from typing import Any, cast

from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.model import DTYPE_SIZES, Checkpoint, Storage, ZipMember
from ckpt_viewer.core.listing.readers import MAX_PICKLE_BYTES, pickle_checkpoint, storage_pid
from ckpt_viewer.core.listing.readers.zip_directory import crc_ok, read_directory, read_member
from ckpt_viewer.core.listing.safe_pickle import dtype_of_storage

MIN_FORMAT_VERSION, MAX_FORMAT_VERSION = 1, 10  # torch 2.13's reader
MAX_COMPRESSED_PICKLE = 64 * 1024 * 1024
C_SPACE = b" \t\n\v\f\r"


class Archive:
    """The records of a torch zip archive, found as torch finds them."""

    def __init__(self, path: str) -> None:
        self.members = read_directory(path)
        if not self.members:
            raise CheckpointError("zip archive holds no files: not a PyTorch checkpoint")
        first = self.members[0].raw_name
        if b"/" not in first:
            raise CheckpointError(
                f"zip entry {self.members[0].name!r} is not inside a folder: "
                "not a PyTorch checkpoint"
            )
        self.prefix = first[: first.index(b"/") + 1]
        # one lower() for every name (read_directory refused names holding a NUL)
        folded = b"\0".join(m.raw_name for m in self.members).lower().split(b"\0")
        self.by_name = dict(zip(folded, self.members))
        self.crc_failures: list[str] = []

    def find(self, name: str) -> ZipMember | None:
        return self.by_name.get((self.prefix + name.encode("utf-8", "surrogatepass")).lower())

    def require(self, name: str) -> ZipMember:
        member = self.find(name)
        if member is None:
            raise CheckpointError(f"archive has no {name} record: not a PyTorch checkpoint")
        return member

    def read(self, member: ZipMember, limit: int) -> bytes:
        data = read_member(member, limit, check_crc=False)
        if not crc_ok(member, data):
            self.crc_failures.append(member.name)
        return data

    def check_folder(self) -> None:
        outside = next((m for m in self.members if not m.raw_name.startswith(self.prefix)), None)
        if outside is not None:
            raise CheckpointError(
                f"zip entry {outside.name!r} lies outside the archive folder "
                f"{self.prefix.decode('utf-8', 'backslashreplace')!r} "
                "(torch refuses such archives)"
            )


def parse_version(text: bytes) -> int:
    """The archive format version, read as C's stoull reads it (leading space, then digits)."""
    digits = text.lstrip(C_SPACE)
    if digits[:1] == b"+":
        digits = digits[1:]
    end = 0
    while end < len(digits) and digits[end : end + 1].isdigit():
        end += 1
    if not end or digits[:1] == b"-":
        raise CheckpointError(f"archive format version {text[:20]!r} is not a number")
    version = int(digits[:end])
    if not MIN_FORMAT_VERSION <= version <= MAX_FORMAT_VERSION:
        raise CheckpointError(
            f"archive format version {version} is outside what torch reads "
            f"({MIN_FORMAT_VERSION} to {MAX_FORMAT_VERSION})"
        )
    return version


def read_byteorder(archive: Archive) -> str:
    member = archive.find("byteorder")
    if member is None:
        return "little"
    text = archive.read(member, 64)
    if text not in (b"little", b"big"):
        raise CheckpointError(
            f"unknown byteorder {text[:20]!r} (torch accepts exactly 'little' or 'big')"
        )
    return text.decode()


def check_storage_alignment(archive: Archive) -> None:
    """torch.load reads `.storage_alignment` with int(): a record that is not one fails it."""
    member = archive.find(".storage_alignment")
    if member is None:
        return
    text = archive.read(member, 1 << 20)
    try:
        int(text)
    except ValueError:
        raise CheckpointError(
            f".storage_alignment holds {text[:20]!r}, not an integer (torch.load fails on it)"
        ) from None


def read(path: str) -> Checkpoint:
    archive = Archive(path)
    version = parse_version(
        archive.read(archive.find(".data/version") or archive.require("version"), 64)
    )
    archive.check_folder()
    byteorder = read_byteorder(archive)
    check_storage_alignment(archive)
    pickle_member = archive.require("data.pkl")
    if pickle_member.compress_type != 0 and pickle_member.file_size > MAX_COMPRESSED_PICKLE:
        # torch never compresses data.pkl; a small record inflating this far is a zip bomb
        raise CheckpointError(
            f"data.pkl is compressed and would inflate to "
            f"{pickle_member.file_size:,} bytes; refusing (zip bomb?)"
        )
    data = archive.read(pickle_member, MAX_PICKLE_BYTES)
    torchscript = any(m.raw_name == archive.prefix + b"constants.pkl" for m in archive.members)
    storages: dict[Any, Storage] = {}
    dtypes: dict[str, str] = {}  # storage type name -> dtype (a file names a few, 50,000 times)
    records_by_name, data_folder = archive.by_name, archive.prefix + b"data/"

    def storage_factory(pid: Any) -> Storage:
        storage_type, key, location, numel = storage_pid(pid)
        name = getattr(storage_type, "qualname", None)
        dtype = dtypes.get(name) if type(name) is str else None
        if dtype is None:
            dtype = dtype_of_storage(storage_type)
            if type(name) is str:
                dtypes[name] = dtype
        if key in storages:  # torch keeps the first reference's type and size
            return storages[key]
        member = records_by_name.get(
            (data_folder + str(key).encode("utf-8", "surrogatepass")).lower()
        )  # archive.find(f"data/{key}"), inlined
        if member is None:
            raise CheckpointError(f"storage record data/{key} is missing from the archive")
        needed = numel * DTYPE_SIZES[dtype]
        if member.file_size != needed:
            raise CheckpointError(
                f"storage record data/{key} holds {member.file_size:,} bytes "
                f"but its storage is {needed:,} (torch refuses the file)"
            )
        storages[key] = Storage(str(key), dtype, numel, location, member, byteorder)
        return storages[key]

    fmt = "torchscript" if torchscript else "torch-zip"
    checkpoint = pickle_checkpoint(path, fmt, data, storage_factory, byteorder=byteorder)
    checkpoint.metadata["archive format version"] = version
    if torchscript:
        checkpoint.refusals.append(
            "a TorchScript archive: torch.load(weights_only=True) refuses "
            "these (torch.jit.load would run its code)"
        )
    if archive.crc_failures:
        checkpoint.warnings.append(
            f"{', '.join(archive.crc_failures)} fail(s) the CRC-32 check; torch does not check "
            "it, so what is shown is what torch reads, but the file is damaged"
        )
    if byteorder == "big":
        checkpoint.warnings.append(
            "tensors are stored big-endian; values are byte-swapped when read"
        )
    compressed = [  # each storage's source is its record (storage_factory)
        s.key
        for s in storages.values()
        if cast(ZipMember, s.source).compress_type != 0  # ZIP_STORED
    ]
    if compressed:
        checkpoint.warnings.append(
            f"{len(compressed)} storage record(s) are compressed; "
            "they are inflated, never memory-mapped, when read"
        )
    return checkpoint
