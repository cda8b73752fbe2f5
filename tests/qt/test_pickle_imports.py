"""Tools > Pickle Imports (also from the unsafe banner) and File > Save Sanitized Copy."""

import argparse
import os

import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QMessageBox, QPushButton
from qt_helpers import open_and_wait

import builders


def test_code_globals_are_red_with_call_and_key(qtbot, window, tmp_path):
    marker = tmp_path / "pwned"
    src = builders.save(
        {
            "w": torch.ones(2),
            "cfg": {"hook": builders.Call(os.system, f"touch {marker}")},
            "args": argparse.Namespace(lr=0.1),
        },
        tmp_path / "evil.pt",
    )
    open_and_wait(qtbot, window, src)
    tab = window.current_tab()
    button = tab.findChild(QPushButton, "bannerPickleImports")
    assert button.isVisible()
    with qtbot.waitSignal(tab.pickle_imports_requested):
        qtbot.mouseClick(button, Qt.LeftButton)
    view = window.findChild(object, "pickleImportsView")
    assert view is not None and view.isVisible()
    rows = dict(view.rows())
    assert rows["posix.system"] == "code" and rows["argparse.Namespace"] == "data"
    code = view.table.topLevelItem(0)
    assert code.text(0) == "posix.system" and code.foreground(0).color().name() == "#b02a37"
    children = [code.child(i).text(0) for i in range(code.childCount())]
    assert any(c.startswith("called as posix.system(") and "pwned" in c for c in children)
    assert "cfg.hook" in children
    assert view.verdict.text().startswith("torch.load(weights_only=True) refuses this file: ")
    assert view.verdict.textFormat() == Qt.PlainText
    assert not view.snippet.isVisible()  # code: no allowlist should load it
    key_item = code.child(children.index("cfg.hook"))
    with qtbot.waitSignal(view.key_activated) as blocker:
        view.table.itemClicked.emit(key_item, 0)
    assert blocker.args == ["cfg.hook"] and tab.selected_key() == "cfg.hook"
    assert not marker.exists()


def test_data_only_file_shows_snippet_and_copies_it(qtbot, window, tmp_path):
    src = builders.save(
        {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "data.pt"
    )
    open_and_wait(qtbot, window, src)
    window.findChild(object, "actionPickleImports").trigger()
    view = window.findChild(object, "pickleImportsView")
    assert view.snippet.isVisible() and view.snippet.isReadOnly()
    assert "safe_globals" in view.snippet.toPlainText()
    # the font asked for, not the one the host resolves it to (Noto Sans Mono is not
    # reported fixed-pitch)
    assert view.snippet.font() == QFontDatabase.systemFont(QFontDatabase.FixedFont)
    qtbot.mouseClick(view.copy_button, Qt.LeftButton)
    assert QGuiApplication.clipboard().text() == view.snippet.toPlainText()


def test_plain_state_dict_says_yes(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    assert not window.current_tab().findChild(QPushButton, "bannerPickleImports").isVisible()
    view = window.pickle_imports_current()
    assert view.verdict.text() == "torch.load(weights_only=True) loads this file as it is"
    assert {category for _, category in view.rows()} == {"torch"}


def test_banner_and_dialog_say_the_same_for_whole_models(qtbot, window, tmp_path):
    """One sentence source (core.globals): torch's own classes are not "a class from the code
    that wrote the file", and both places agree on whether an allowlist loads the file."""
    from ckpt_viewer.core.listing.globals import TORCH_CLASS, advice

    torch_model = builders.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "m.pt")
    user_model = builders.whole_model_file(tmp_path / "user.pt")
    for path in (torch_model, user_model):
        open_and_wait(qtbot, window, path)
        tab = window.current_tab()
        banner = tab.banner.text()
        view = window.pickle_imports_current()
        note = advice(tab.checkpoint)
        assert note and note in banner
        if path == torch_model:
            assert TORCH_CLASS in banner and "code that wrote the file" not in banner
            assert (
                view.snippet.isVisible()
                and "torch.nn.modules.linear.Linear" in view.snippet.toPlainText()
            )
        else:
            assert "__main__.Net" in banner and "code that wrote the file" in banner
            assert not view.snippet.isVisible() and view.snippet_note.text() == note
        view.close()


def test_dcp_bytes_item_payload_is_red_in_the_banner(qtbot, window, tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    folder = tmp_path / "dcp"
    dcp.save(
        {"w": torch.ones(2), "x": builders.Call(os.system, f"touch {marker}")},
        checkpoint_id=str(folder),
    )
    open_and_wait(qtbot, window, str(folder))
    tab = window.current_tab()
    assert tab.banner.isVisible() and tab.banner.property("severity") == "code"
    assert "posix.system(" in tab.banner.text() and " at x" in tab.banner.text()
    view = window.pickle_imports_current()
    assert dict(view.rows())["posix.system"] == "code"
    assert "torch.load does not read a DCP folder" in view.verdict.text()
    assert not marker.exists()


def test_save_sanitized_copy_in_a_worker(qtbot, window, tmp_path):
    src = builders.whole_model_file(tmp_path / "whole.pt")
    open_and_wait(qtbot, window, src)
    assert window.findChild(object, "actionSanitize") is not None
    destination = str(tmp_path / "clean.pt")
    with qtbot.waitSignal(window.sanitized, timeout=60_000) as blocker:
        window.sanitize_current(destination)
    path, ok, text = blocker.args
    assert ok and path == destination and "model: module __main__.Net -> its state_dict" in text
    box = window.findChild(QMessageBox, "sanitizeResult")
    assert box.textFormat() == Qt.PlainText
    clean = torch.load(destination, weights_only=True)
    assert set(clean) == {"model", "ema"} and "head.weight" in clean["model"]


def test_sanitize_failure_is_reported(qtbot, window, tmp_path):
    src = builders.save({"w": torch.ones(2)}, tmp_path / "s.pt")
    open_and_wait(qtbot, window, src)
    with qtbot.waitSignal(window.sanitized, timeout=30_000) as blocker:
        window.sanitize_current(str(tmp_path / "missing" / "out.pt"))
    path, ok, message = blocker.args
    assert not ok and "does not exist" in message
    assert not os.path.exists(tmp_path / "missing")
