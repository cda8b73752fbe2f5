"""Our central-directory reader agrees with Python's zipfile, zip64 included."""

import zipfile

import pytest

import builders
from ckpt_viewer.core import CheckpointError
from ckpt_viewer.core.listing.readers.zip_directory import read_directory, read_member


def same_as_zipfile(path):
    ours = read_directory(str(path))
    with zipfile.ZipFile(path) as zf:
        theirs = zf.infolist()
        assert [
            (m.name, m.header_offset, m.compress_type, m.compressed_size, m.file_size, m.crc)
            for m in ours
        ] == [
            (i.filename, i.header_offset, i.compress_type, i.compress_size, i.file_size, i.CRC)
            for i in theirs
        ]
        for member in ours:
            assert read_member(member, 1 << 30) == zf.read(member.name)


def test_torch_archive(tmp_path):
    same_as_zipfile(builders.training_checkpoint(tmp_path / "c.pt"))


def test_zip64_and_deflate(tmp_path):
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("a/data.pkl", "w", force_zip64=True) as f:
            f.write(b"x" * 1000)
        zf.writestr("a/deflated", b"y" * 5000, compress_type=zipfile.ZIP_DEFLATED)
    same_as_zipfile(path)


def test_crc_mismatch_is_caught(tmp_path):
    path = tmp_path / "c.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/data.pkl", b"hello world")
    data = bytearray(path.read_bytes())
    data[data.index(b"hello")] ^= 1
    path.write_bytes(bytes(data))
    (member,) = read_directory(str(path))
    with pytest.raises(CheckpointError, match="CRC-32"):
        read_member(member, 100)


def test_truncated_directory(tmp_path):
    path = builders.training_checkpoint(tmp_path / "c.pt")
    data = open(path, "rb").read()
    for cut in (len(data) - 10, len(data) - 200):
        bad = tmp_path / "cut.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_directory(str(bad))


@pytest.mark.parametrize("alignment", [b"64\x00", b"0x40", b"sixty-four", b" 64 ", b"6_4"])
def test_storage_alignment_record_read_as_torch_reads_it(tmp_path, alignment):
    """torch.load reads `.storage_alignment` with int(): what int() refuses, torch fails on, and
    so do we; what it accepts (spaces, underscores) loads in both."""
    import io

    import torch
    import zipcraft

    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buffer)
    entries = zipcraft.entries_of(buffer.getvalue())
    for entry in entries:
        if entry.name.endswith(b"/.storage_alignment"):
            entry.data = alignment
    path = tmp_path / "aligned.pt"
    path.write_bytes(zipcraft.make_zip(entries))
    from ckpt_viewer.core.listing.open import open_checkpoint

    try:
        torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - torch's refusal, whatever its type
        with pytest.raises(CheckpointError, match="storage_alignment"):
            open_checkpoint(str(path))
        return
    assert open_checkpoint(str(path)).find("w") is not None
