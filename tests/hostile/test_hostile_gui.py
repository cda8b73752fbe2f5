"""The window faced with every corpus file: a message or an inert tab; the app stays usable."""

import pytest

import builders
from corpus import CORPUS


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    sentinel = folder / "SENTINEL"
    files = {}
    for name, (builder, expect) in sorted(CORPUS.items()):
        sub = folder / name
        sub.mkdir()
        files[name] = (builder(sub, sentinel), expect)
    yield files
    assert not sentinel.exists(), "code from a file ran"


def test_every_hostile_file_in_the_gui(qtbot, tmp_path, corpus_files):
    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    good = builders.training_checkpoint(tmp_path / "good.pt")
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([good])
    outcomes = {}
    window.loaded.connect(lambda path: outcomes.setdefault(path, ("opens", "")))
    window.load_failed.connect(lambda path, message: outcomes.setdefault(path, ("error", message)))
    for name, (path, expect) in corpus_files.items():
        window.open_paths([path])
        qtbot.waitUntil(
            lambda: any(p.endswith(path.rstrip("/").split("/")[-1]) for p in outcomes),
            timeout=20_000,
        )
        outcome, message = next(
            v for p, v in outcomes.items() if p.endswith(path.rstrip("/").split("/")[-1])
        )
        assert outcome == expect, (name, message)
        if outcome == "error":
            assert message and "\n" not in message
            dialog = window.findChild(object, "errorDialog")
            assert dialog is not None
            dialog.close()
    # the first tab is untouched and still works
    first = window.tabs.widget(0)
    assert window.tabs.tabText(0) == "good.pt"
    with qtbot.waitSignal(first.tensor_view.view_ready, timeout=20_000):
        first.select_key("model_state_dict.0.weight")
    opened = sum(1 for v in outcomes.values() if v[0] == "opens")
    assert window.tabs.count() == 1 + opened


HOSTILE_TEXT = "<h1>BIG</h1><img src=x>\x1b[2K\r\nTraceback\u202e"


def test_text_from_files_is_never_rich_text(qtbot, tmp_path):
    """Keys, scalars and error messages full of HTML and control characters: every label is
    plain text or escaped, tooltips and the error dialog too."""
    import json
    import struct

    import torch
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QLabel, QMessageBox

    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    path = builders.save(
        {
            HOSTILE_TEXT: torch.ones(4),
            "s" + HOSTILE_TEXT: HOSTILE_TEXT,
            "big": 10**100_000,
            "deep": {".".join(["a"] * 100_000): 1},
            "optim": optimizer.state_dict(),
        },
        tmp_path / "evil.pt",
    )
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([path])
    tab = window.tabs.currentWidget()
    with qtbot.waitSignal(tab.tensor_view.view_ready, timeout=20_000):
        tab.select_key(HOSTILE_TEXT)
    header = json.dumps({HOSTILE_TEXT: "not an object"}).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    with qtbot.waitSignal(window.load_failed, timeout=20_000):
        window.open_paths([str(bad)])
    dialog = window.findChild(QMessageBox, "errorDialog")
    assert dialog.textFormat() == Qt.PlainText and "\x1b" not in dialog.text()

    for label in window.findChildren(QLabel):
        if label.textFormat() != Qt.PlainText:
            assert "<h1>" not in label.text() and "<img" not in label.text(), label.objectName()
        assert "\x1b" not in label.text() and "\r" not in label.text()
    model = tab.model
    for row in range(model.rowCount()):
        index = model.index(row, 0)
        tooltip = model.data(index, Qt.ToolTipRole)
        assert "<h1>" not in tooltip and "<img" not in tooltip
        shown = model.data(index, Qt.DisplayRole)
        assert len(shown) < 1000 and "\x1b" not in shown and "\n" not in shown


def test_screenshot_of_a_view_that_fails_exits_2_at_once(tmp_path):
    """The tensor's record cannot be inflated: the view ends with a message, --screenshot
    with exit 2 and one line, instead of waiting for statistics that never come."""
    import subprocess
    import sys
    import zipfile

    import torch

    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory

    source = builders.save({"w": torch.randn(100_000)}, tmp_path / "src.pt")
    path = tmp_path / "bad-inflate.pt"
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(path, "w") as b:
        for info in a.infolist():
            method = (
                zipfile.ZIP_DEFLATED if info.filename.endswith("/data/0") else zipfile.ZIP_STORED
            )
            b.writestr(info.filename, a.read(info), compress_type=method)
    member = next(m for m in read_directory(str(path)) if m.name.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    data[data_offset(member) + 100 : data_offset(member) + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer", str(path), "--screenshot", str(tmp_path / "out.png")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 2  # the view's failure, well before the screenshot's timeout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "inflated" in lines[0]
