"""The main window through its automation contract: open_paths, signals, objectNames."""

import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QThreadPool, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication, QLabel, QLineEdit, QPushButton, QTreeView
from qt_helpers import open_and_wait

import builders
from ckpt_viewer.qt import tree_model


def current_tab(window):
    return window.tabs.currentWidget()


def test_open_shows_tree_summary_and_no_banner(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    tabs = window.findChild(type(window.tabs), "tabs")
    assert tabs.count() == 1 and tabs.tabText(0) == "train.pth"
    tab = current_tab(window)
    tree = tab.findChild(QTreeView, "keyTree")
    model = tree.model()
    top_keys = [model.index(r, 0).data(Qt.UserRole) for r in range(model.rowCount())]
    assert top_keys == ["epoch", "loss", "model_state_dict", "optimizer_state_dict"]
    msd = model.index(2, 0)
    group = model.index(0, 0, msd)  # dotted state_dict names become groups
    assert (group.data(), group.data(Qt.UserRole)) == ("0", "model_state_dict.0")
    assert model.index(0, 4, msd).data() == "15"
    first = model.index(0, 0, group)
    assert first.data(Qt.UserRole) == "model_state_dict.0.weight"
    assert first.data() == "weight"
    assert model.index(0, 2, group).data() == "[3, 4]"
    assert model.index(0, 3, group).data() == "float32"
    assert model.index(0, 4, group).data() == "12"
    assert model.index(2, 4).data() == "36"  # 15 + 13 + 8, summed over the subtree
    assert not tab.findChild(QLabel, "unsafeBanner").isVisible()
    summary = tab.findChild(object, "summaryPanel").toPlainText()
    assert "torch-zip" in summary and "epoch" in summary
    assert {a.objectName() for a in window.actions()} >= {"actionOpen"}


def test_unsafe_banner_names_globals(qtbot, window, tmp_path):
    path = builders.whole_model_file(tmp_path / "whole.pt")
    open_and_wait(qtbot, window, path)
    banner = current_tab(window).findChild(QLabel, "unsafeBanner")
    assert banner.isVisible()
    assert "__main__.Net" in banner.text() and "torch would need its source" in banner.text()
    assert banner.property("severity") == "info" and banner.textFormat() == Qt.PlainText
    tree = current_tab(window).findChild(QTreeView, "keyTree")
    model = tree.model()
    assert model.index(0, 1).data() == "Net"  # module class name in Type / Class


def test_failed_load_reports_and_keeps_other_tabs(qtbot, window, training_file, tmp_path):
    open_and_wait(qtbot, window, training_file)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with qtbot.waitSignal(window.load_failed, timeout=20_000) as blocker:
        window.open_paths([str(bad)])
    path, message = blocker.args
    assert path == str(bad) and message and "\n" not in message
    assert window.tabs.count() == 1 and window.tabs.tabText(0) == "train.pth"
    dialog = window.findChild(object, "errorDialog")
    assert dialog is not None and message in dialog.text()
    dialog.close()
    # the app is still usable
    open_and_wait(qtbot, window, builders.safetensors_file(tmp_path / "w.safetensors"))
    assert window.tabs.count() == 2


def test_drop_real_file_urls_opens_each_in_a_tab(qtbot, window, training_file, tmp_path):
    second = builders.safetensors_file(tmp_path / "w.safetensors")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(training_file), QUrl.fromLocalFile(second)])
    event = QDropEvent(QPointF(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    opened = []
    window.loaded.connect(opened.append)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: len(opened) == 2, timeout=30_000)
    assert sorted(opened) == sorted([training_file, second])
    assert window.tabs.count() == 2


def test_cancel_drops_a_pending_load(qtbot, window, training_file):
    with qtbot.waitSignal(window.load_failed, timeout=5000) as blocker:
        window.open_paths([training_file])
        assert window.findChild(object, "cancelButton").isVisible()
        window.cancel_loading()
    assert blocker.args == [training_file, "cancelled"]
    # The worker's late result must not add a tab: let it finish, then deliver what it posted.
    QThreadPool.globalInstance().waitForDone(30_000)
    QApplication.processEvents()
    assert window.tabs.count() == 1 and window.tabs.tabText(0) == "Welcome"


def test_filter_substring_glob_regex_keeps_parents(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    tab = current_tab(window)
    line = tab.findChild(QLineEdit, "keyFilter")
    model = tab.findChild(QTreeView, "keyTree").model()

    def shown_keys():
        return [
            row.node.key
            for row in model.rows
            if row.parent is not None
            and all(a in model.visible_children(a.parent) for a in _ancestors(row))
        ]

    def type_filter(text):
        with qtbot.waitSignal(tab.filter_applied, timeout=5_000):
            line.setText(text)

    with qtbot.waitSignal(tab.filter_applied, timeout=5_000):
        qtbot.keyClicks(line, "exp_avg_sq")
    keys = shown_keys()
    assert "optimizer_state_dict" in keys and "optimizer_state_dict.state.0" in keys
    assert all(k.endswith("exp_avg_sq") or not k.count(".") > 2 for k in keys)
    assert not any(k.startswith("model_state_dict") for k in keys)
    type_filter("model_state_dict.*.bias")
    assert {k for k in shown_keys() if k.endswith("bias")} == {
        "model_state_dict.0.bias",
        "model_state_dict.1.bias",
        "model_state_dict.3.bias",
    }
    type_filter("/running_(mean|var)$/")
    assert {k for k in shown_keys() if "running" in k} == {
        "model_state_dict.1.running_mean",
        "model_state_dict.1.running_var",
    }
    type_filter("/[unclosed/")
    assert "bad regular expression" in tab.filter_status.text()
    type_filter("")
    assert model.rowCount() == 4


def _ancestors(row):
    while row.parent is not None:
        yield row
        row = row.parent


def test_filter_shows_exactly_matches_their_subtrees_and_ancestors(qtbot, window, tmp_path):
    state = {
        f"enc.layers.{i}.{part}.weight": torch.zeros(1)
        for i in range(12)
        for part in ("attn", "mlp", "norm")
    }
    state.update({"head.weight": torch.zeros(1), "enc.scale": torch.zeros(1)})
    path = builders.save(state, tmp_path / "nested.pt")
    open_and_wait(qtbot, window, path)
    model = current_tab(window).model
    for text in ("attn", "layers.1", "enc", "/\\.1[01]\\./", "*norm*", "head", "zzz"):
        model.set_filter(text)
        hits = set(tree_model.matching_rows(text, model.keys, model.lowered)) - {0}
        expected = set()
        for row in model.rows[1:]:
            line = [row] + list(_ancestors(row.parent)) if row.parent.parent else [row]
            below = range(row.index, row.index + row.size)
            if any(r.index in hits for r in line) or any(i in hits for i in below):
                expected.add(row.node.key)
        shown = {
            row.node.key
            for row in model.rows[1:]
            if all(a in model.visible_children(a.parent) for a in _ancestors(row))
        }
        assert shown == expected, text
        assert model.visible_count == len(expected)


def test_optimizer_view_tables(qtbot, window, training_file):
    from PySide6.QtWidgets import QTableWidget

    open_and_wait(qtbot, window, training_file)
    view = current_tab(window).findChild(object, "optimizerView")
    group = view.findChild(QTableWidget, "paramGroupTable")
    hyper = {group.item(r, 0).text(): group.item(r, 1).text() for r in range(group.rowCount())}
    assert hyper["lr"] == "0.001" and hyper["betas"] == "(0.9, 0.999)"
    state = view.findChild(QTableWidget, "stateTable")
    headers = [state.horizontalHeaderItem(c).text() for c in range(state.columnCount())]
    assert headers == ["parameter", "step", "exp_avg", "exp_avg_sq"]
    assert state.item(0, 0).text() == "0.weight" and state.item(0, 2).text() == "float32 [3x4]"
    # Adam's 0-d step shows its value (read in a worker), not "float32 [scalar]"
    qtbot.waitUntil(lambda: state.item(0, 1).text() != "reading...", timeout=10_000)
    assert state.item(0, 1).text() == "1"
    # every row shown: the pane's scroll bar is the only one; the names column is not cut
    assert state.verticalScrollBarPolicy() == Qt.ScrollBarAlwaysOff
    assert state.height() >= state.rowCount() * state.rowHeight(0)
    widest = max(
        state.fontMetrics().horizontalAdvance(state.item(r, 0).text())
        for r in range(state.rowCount())
    )
    assert state.columnWidth(0) >= widest


def test_lightning_scheduler_shown(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QTableWidget

    open_and_wait(qtbot, window, builders.lightning_file(tmp_path / "l.ckpt"))
    view = current_tab(window).findChild(object, "optimizerView")
    table = view.findChild(QTableWidget, "schedulerTable")
    fields = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert fields["step_size"] == "5"


def test_recent_files_and_about(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    assert window.recent_files()[0] == training_file
    assert [a.text() for a in window.recent_menu.actions()] == [training_file]


def test_model_passes_qabstractitemmodeltester(qtbot, qtmodeltester, window, tmp_path):
    path = builders.whole_model_file(tmp_path / "whole.pt")
    open_and_wait(qtbot, window, path)
    model = current_tab(window).model
    qtmodeltester.check(model)
    model.set_filter("head")
    qtmodeltester.check(model)
    model.sort(4, Qt.DescendingOrder)
    model.set_filter("")
    qtmodeltester.check(model)


def test_sorting_by_size(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    tree = current_tab(window).findChild(QTreeView, "keyTree")
    tree.sortByColumn(5, Qt.DescendingOrder)
    model = tree.model()
    assert model.index(0, 0).data(Qt.UserRole) == "optimizer_state_dict"
    tree.sortByColumn(0, Qt.AscendingOrder)
    assert model.index(0, 0).data(Qt.UserRole) == "epoch"


def test_a_level_shown_after_a_sort_comes_sorted(qtbot, window, tmp_path):
    """A sort orders the levels in view at once and every other level when first shown."""
    sizes = {f"blocks.{i}.w": (7 * i) % 11 + 1 for i in range(12)}
    path = builders.save({k: torch.zeros(n) for k, n in sizes.items()}, tmp_path / "s.pt")
    open_and_wait(qtbot, window, path)
    tab = current_tab(window)
    model = tab.model
    tab.tree.collapseAll()
    tab.tree.sortByColumn(tree_model.ELEMENTS, Qt.DescendingOrder)
    blocks = model.index(0, 0)
    tab.tree.expand(blocks)
    numels = {k: torch.load(path, weights_only=True)[k].numel() for k in sizes}
    shown = [model.index(r, 0, blocks).data(Qt.UserRole) for r in range(model.rowCount(blocks))]
    by_size = sorted(numels, key=lambda k: -numels[k])  # stable: ties keep the listing order
    assert [numels[f"{k}.w"] for k in shown] == [numels[k] for k in by_size]
    tab.tree.collapseAll()
    tab.tree.sortByColumn(0, Qt.AscendingOrder)
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("blocks.1")
    blocks = model.index(0, 0)
    shown = [model.index(r, 0, blocks).data(Qt.UserRole) for r in range(model.rowCount(blocks))]
    assert shown == ["blocks.1", "blocks.10", "blocks.11"]  # natural order again


def test_tools_verify_reports_intact_and_damaged(qtbot, window, tmp_path):
    import torch

    from ckpt_viewer.core.listing.readers.zip_directory import data_offset, read_directory

    path = builders.save({"w": torch.randn(100)}, tmp_path / "w.pt")
    open_and_wait(qtbot, window, path)
    with qtbot.waitSignal(window.verified, timeout=20_000) as blocker:
        window.findChild(type(window.export_action), "actionVerify").trigger()
    assert blocker.args == [path, True, "intact"]
    assert window.findChild(object, "verifyResult") is None  # a success is not a modal box
    assert window.statusBar().currentMessage().startswith("w.pt is intact: ")
    assert window.statusBar().toolTip() == window.statusBar().currentMessage()  # on hover
    member = next(m for m in read_directory(path) if m.name.endswith("/data/0"))
    data = bytearray(open(path, "rb").read())
    data[data_offset(member) + 7] ^= 0x80
    open(path, "wb").write(bytes(data))
    with qtbot.waitSignal(window.verified, timeout=20_000) as blocker:
        window.verify_current()
    assert blocker.args[1] is False and "CRC-32" in blocker.args[2]
    box = window.findChild(object, "verifyResult")
    assert box.text().startswith("Tensor w is damaged")  # the key, not data/0 first
    assert (
        not window.activity.isVisible() and "Verifying" not in window.statusBar().currentMessage()
    )
    with qtbot.waitSignal(current_tab(window).tensor_selected, timeout=5000) as shown:
        box.findChild(QPushButton, "showDamagedTensor").click()
    assert shown.args == ["w"]
    assert window.statusBar().currentMessage() == "w.pt: damaged: tensor w fails its check"


def test_tools_verify_intact_file_that_weights_only_refuses(qtbot, window, tmp_path):
    """Loadability is not damage: the window says intact, and the refusal separately."""
    import argparse

    import torch

    path = builders.save(
        {"w": torch.randn(4), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt"
    )
    open_and_wait(qtbot, window, path)
    with qtbot.waitSignal(window.verified, timeout=20_000) as blocker:
        window.verify_current()
    assert blocker.args == [path, True, "intact"]
    text = window.statusBar().currentMessage()
    assert "is intact" in text and "damaged" not in text
    assert "refuses it: argparse.Namespace" in text


def gate_chunks(monkeypatch, module, after: int):
    """Makes module's iter_chunks wait, once `after` chunks were served, until the test opens
    the gate: a cancel then lands mid-job, deterministically."""
    import threading

    gate, served = threading.Event(), []
    real = module.iter_chunks
    if hasattr(module, "blockwise"):  # diff reads local tensors in blocks: take the chunked path
        monkeypatch.setattr(module, "blockwise", lambda tensor: False)

    def gated(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            served.append(chunk.size)
            if len(served) == after:
                gate.wait(30)
            yield chunk

    monkeypatch.setattr(module, "iter_chunks", gated)
    return gate, served


def test_cancel_stops_a_running_compare_early(qtbot, window, tmp_path, monkeypatch):
    import ckpt_viewer.core.analysis.diff as diff_module

    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    a = builders.save({"w": torch.randn(40_000)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.randn(40_000)}, tmp_path / "b.pt")
    gate, served = gate_chunks(monkeypatch, diff_module, after=4)
    compared = []
    window.compared.connect(lambda *args: compared.append(args))
    window.compare_paths(a, b)
    assert window.activity.isVisible() and "Comparing" in window.activity.text()
    worker = window.controller.jobs.running[f"compare:{a}:{b}"]
    qtbot.waitUntil(lambda: len(served) >= 4, timeout=10_000)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        window.cancel_button.click()
        gate.set()
    assert len(served) < 2 * 40  # both tensors: 80 chunks to the end
    assert not compared and not window.controller.busy() and not window.activity.isVisible()


def test_cancel_stops_a_running_verify(qtbot, window, tmp_path, monkeypatch):
    import ckpt_viewer.core.analysis.verify as verify_module

    path = builders.save({"w": torch.randn(1 << 20)}, tmp_path / "w.pt")
    open_and_wait(qtbot, window, path)
    monkeypatch.setattr(verify_module, "BLOCK", 64 << 10)
    blocks = []
    real_check = verify_module._check_member

    def counted(member, f):
        for nbytes in real_check(member, f):
            blocks.append(nbytes)
            if len(blocks) == 2:
                gate.wait(30)
            yield nbytes

    import threading

    gate = threading.Event()
    monkeypatch.setattr(verify_module, "_check_member", counted)
    window.verify_current()
    assert "Verifying w.pt" in window.activity.text() and window.cancel_button.isVisible()
    worker = window.controller.jobs.running[f"verify:{path}"]
    qtbot.waitUntil(lambda: len(blocks) >= 2, timeout=10_000)
    with qtbot.waitSignal(window.verified, timeout=5000) as blocker:
        window.cancel_button.click()
    assert blocker.args == [path, False, "cancelled"]
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        gate.set()
    assert len(blocks) < 64 and window.findChild(object, "verifyResult") is None


def test_compare_tab_filters_and_overlays(qtbot, window, tmp_path):
    import torch
    from PySide6.QtWidgets import QCheckBox

    a = builders.save(
        {"w": torch.randn(500), "same": torch.ones(3), "old": torch.ones(1)}, tmp_path / "a.pt"
    )
    b = builders.save(
        {"w": torch.randn(500) + 1, "same": torch.ones(3), "new": torch.ones(1)}, tmp_path / "b.pt"
    )
    open_and_wait(qtbot, window, a)
    tab = window.current_tab()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(b)])
    event = QDropEvent(QPointF(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.ShiftModifier)
    with qtbot.waitSignal(window.compared, timeout=30_000) as blocker:
        window.dropEvent(event)
    assert blocker.args == [tab.checkpoint.path, b]
    view = window.tabs.currentWidget()
    assert view.objectName() == "compareView"
    proxy = view.table.model()
    rows = {proxy.index(r, 0).data(): proxy.index(r, 1).data() for r in range(proxy.rowCount())}
    assert rows == {
        "w": "\u2260 values differ",
        "same": "= identical",
        "old": "\u25c0 only in A",
        "new": "\u25b6 only in B",
    }  # a symbol and words, not colour alone
    legend = {s: b.text() for s, b in view.legend_buttons.items()}
    assert legend == {
        "identical": "= identical  1",
        "changed": "\u2260 values differ  1",
        "only in A": "\u25c0 only in A  1",
        "only in B": "\u25b6 only in B  1",
    }
    assert (
        "2 keys in both files: 1 identical, 1 values differ; 1 only in A, 1 only in B."
        in view.summary.text()
    )
    assert "1 missing, 1 unexpected, 0 size mismatches." in view.summary.text()
    assert not view.detail.isVisible()  # no empty pane before a selection
    view.findChild(QCheckBox, "onlyDifferences").setChecked(True)
    assert proxy.rowCount() == 3 and not view.legend_buttons["identical"].isChecked()
    view.legend_buttons["only in B"].click()
    assert proxy.rowCount() == 2
    view.legend_buttons["only in B"].click()
    view.filter.setText("w")
    assert proxy.rowCount() == 2 and {proxy.index(r, 0).data() for r in range(2)} == {"w", "new"}
    with qtbot.waitSignal(view.overlay_ready, timeout=30_000):
        view.table.setCurrentIndex(
            next(
                proxy.index(r, 0)
                for r in range(proxy.rowCount())
                if proxy.index(r, 0).data() == "w"
            )
        )
    assert view.plot is not None and view.curve_b.getData()[1].sum() == 500
    assert view.detail.isVisible() and view.curve_diff.getData()[1].sum() == 500
    assert len(view.scatter.data) == 500
    assert not any(
        plot.getAxis(side).autoSIPrefix
        for side in ("left", "bottom")
        for plot in (view.plot, view.diff_plot, view.scatter_plot)
    )
    header = view.table.horizontalHeader()
    for column in range(1, 8):  # status and metrics are not cut
        assert header.sectionSize(column) >= view.table.sizeHintForColumn(column)


def test_compare_closing_the_tab_cancels_its_plot_job(qtbot, window, tmp_path, monkeypatch):
    import ckpt_viewer.core.analysis.diff as diff_module

    a = builders.save({"w": torch.randn(50_000)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.randn(50_000)}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, a)
    with qtbot.waitSignal(window.compared, timeout=30_000):
        window.compare_paths(a, b)
    view = window.tabs.currentWidget()
    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    gate, served = gate_chunks(monkeypatch, diff_module, after=2)
    drawn = []
    view.overlay_ready.connect(drawn.append)
    view.table.setCurrentIndex(view.table.model().index(0, 0))
    worker = view.controller.jobs.running["detail"]
    qtbot.waitUntil(lambda: len(served) >= 2, timeout=10_000)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        window.close_tab(window.tabs.currentIndex())
        gate.set()
    assert len(served) < 2 * 50 and not drawn


def test_new_tab_opens_only_a_screenful_of_rows(qtbot, window, tmp_path):
    small = builders.save({"enc": {"a": torch.zeros(1), "b": torch.zeros(1)}}, tmp_path / "s.pt")
    big = builders.save({"enc": {f"w{i}": torch.zeros(1) for i in range(60)}}, tmp_path / "b.pt")
    open_and_wait(qtbot, window, small)
    tab = current_tab(window)
    assert tab.tree.isExpanded(tab.model.index_of_key("enc"))
    open_and_wait(qtbot, window, big)
    tab = current_tab(window)
    assert not tab.tree.isExpanded(tab.model.index_of_key("enc"))


def test_closing_the_window_stops_running_jobs(qtbot, window, tmp_path, monkeypatch):
    """Exit asks workers to quit (then waits), rather than waiting for them to finish."""
    import ckpt_viewer.core.analysis.diff as diff_module
    from ckpt_viewer.qt import workers

    monkeypatch.setattr(diff_module, "CHUNK", 1000)
    a = builders.save({"w": torch.randn(40_000)}, tmp_path / "a.pt")
    b = builders.save({"w": torch.randn(40_000)}, tmp_path / "b.pt")
    gate, served = gate_chunks(monkeypatch, diff_module, after=4)
    window.compare_paths(a, b)
    qtbot.waitUntil(lambda: len(served) >= 4, timeout=10_000)
    window.close()
    gate.set()
    assert workers.await_workers(10_000)
    assert len(served) < 2 * 40


def test_tied_row_shows_its_own_elements_in_italics(qtbot, tmp_path):
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.rows import build_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    path = builders.save(model.state_dict(), tmp_path / "tied.pt")
    loaded = torch.load(path, weights_only=True)
    assert (
        loaded["1.weight"].untyped_storage().data_ptr()
        == loaded["0.weight"].untyped_storage().data_ptr()
    )
    model_ = tree_model.KeyTreeModel(build_rows(open_checkpoint(path).root))
    rows = {
        model_.data(i, Qt.UserRole): i
        for i in (
            model_.index(r, 0, model_.index(g, 0))
            for g in range(model_.rowCount())
            for r in range(model_.rowCount(model_.index(g, 0)))
        )
    }
    tied = rows["1.weight"]
    cell = tied.siblingAtColumn(tree_model.ELEMENTS)
    assert cell.data() == f"{loaded['1.weight'].numel():,}" == "40"
    assert cell.data(Qt.FontRole).italic()
    assert "tied to 0.weight" in tied.siblingAtColumn(tree_model.TYPE).data()
    assert tied.data() == "weight (tied to 0.weight)"  # in the Key column, never hidden
    assert tied.data(Qt.FontRole).italic() and tied.data(Qt.ForegroundRole) is not None  # muted
    assert tied.siblingAtColumn(tree_model.SIZE).data() == "160 B"  # its own, as torch's
    assert model_.top.elements == 40  # counted once
