"""A level of more than RANGE rows shows them in range rows of RANGE ([0 … 999], ...), so no
opened level has more rows for Qt to lay out: reveal, ticks, sort, filter and expansion go
through them."""

import torch
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QApplication, QTreeView
from qt_helpers import open_and_wait

from ckpt_viewer.qt.tree_model import RANGE

COUNT = 2500


def big_group(path) -> str:
    torch.save({f"w.{i}": torch.full((2,), float(i)) for i in range(COUNT)}, str(path))
    return str(path)


def names_under(model, parent=QModelIndex()) -> list[str]:
    return [model.index(r, 0, parent).data() for r in range(model.rowCount(parent))]


def opened_group(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, big_group(tmp_path / "big.pt"))
    tab = window.current_tab()
    model = tab.model
    w = model.index(0, 0)
    assert w.data() == "w"
    return tab, model, w


def test_a_big_group_shows_range_rows_that_sum_their_rows(qtbot, window, tmp_path):
    assert RANGE == 1000
    tab, model, w = opened_group(qtbot, window, tmp_path)
    assert names_under(model, w) == ["[0 \u2026 999]", "[1000 \u2026 1999]", "[2000 \u2026 2499]"]
    last = model.index(2, 0, w)
    assert last.data(Qt.UserRole) == "w"  # a range row's key: its group's
    assert model.index(2, 4, w).data() == f"{500 * 2:,}"  # elements of its 500 tensors
    assert model.rowCount(last) == 500 and model.index(0, 0, last).data() == "2000"
    assert model.index(0, 0, last).data(Qt.UserRole) == "w.2000"
    assert model.parent(model.index(0, 0, last)) == last and model.parent(last) == w


def test_revealing_a_key_opens_its_range(qtbot, window, tmp_path):
    tab, model, w = opened_group(qtbot, window, tmp_path)
    with qtbot.waitSignal(tab.tensor_selected, timeout=5000) as selected:
        assert tab.select_key("w.2345")
    assert selected.args == ["w.2345"]
    current = tab.tree.currentIndex()
    assert current.data(Qt.UserRole) == "w.2345" and current.row() == 345
    assert current.parent().data() == "[2000 \u2026 2499]"
    assert tab.tree.isExpanded(current.parent()) and tab.tree.isExpanded(w)


def test_ticking_a_range_exports_exactly_its_keys(qtbot, window, tmp_path, synchronous_jobs):
    tab, model, w = opened_group(qtbot, window, tmp_path)
    second = model.index(1, 0, w)
    assert model.setData(second, Qt.Checked, Qt.CheckStateRole)
    assert model.data(second, Qt.CheckStateRole) == Qt.Checked
    assert model.data(w, Qt.CheckStateRole) == Qt.PartiallyChecked
    assert model.data(model.index(0, 0, w), Qt.CheckStateRole) == Qt.Unchecked
    model.setData(model.index(0, 0, second), Qt.Unchecked, Qt.CheckStateRole)
    assert model.data(second, Qt.CheckStateRole) == Qt.PartiallyChecked
    model.setData(second, Qt.Checked, Qt.CheckStateRole)
    dialog = window.export_dialog()
    destination = tmp_path / "out.pth"
    dialog.destination.setText(str(destination))
    with qtbot.waitSignal(dialog.finished_export, timeout=30_000):
        dialog.export_button.click()
    state = torch.load(destination, weights_only=True)
    assert sorted(state) == sorted(f"w.{i}" for i in range(1000, 2000))
    assert all(torch.equal(state[f"w.{i}"], torch.full((2,), float(i))) for i in (1000, 1999))


def test_a_sort_cuts_the_ranges_again_and_keeps_the_open_one_open(qtbot, window, tmp_path):
    tab, model, w = opened_group(qtbot, window, tmp_path)
    tab.tree.expand(w)
    tab.tree.expand(model.index(0, 0, w))
    tab.tree.sortByColumn(0, Qt.DescendingOrder)
    w = model.index(0, 0)
    first = model.index(0, 0, w)
    assert first.data() == "[0 \u2026 999]" and tab.tree.isExpanded(first)
    assert names_under(model, first)[:2] == ["2499", "2498"]
    assert names_under(model, model.index(2, 0, w))[-1] == "0"
    tab.tree.sortByColumn(0, Qt.AscendingOrder)
    assert names_under(model, model.index(0, 0, model.index(0, 0)))[:3] == ["0", "1", "2"]


def test_a_filter_cuts_its_results_and_fewer_than_a_range_show_plain(qtbot, window, tmp_path):
    tab, model, w = opened_group(qtbot, window, tmp_path)
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("w.1")  # w.1, w.10-19, w.100-199, w.1000-1999: 1,111
    w = model.index(0, 0)
    assert names_under(model, w) == ["[0 \u2026 999]", "[1000 \u2026 1110]"]
    assert model.index(0, 0, model.index(1, 0, w)).data(Qt.UserRole).startswith("w.1")
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("w.23")  # w.23, w.230-239, w.2300-2399: 111
    w = model.index(0, 0)
    assert len(names_under(model, w)) == 111 and names_under(model, w)[:2] == ["23", "230"]
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("")
    assert names_under(model, model.index(0, 0))[0] == "[0 \u2026 999]"


def test_expanded_ranges_come_back_when_the_filter_is_cleared(qtbot, window, tmp_path):
    tab, model, w = opened_group(qtbot, window, tmp_path)
    tab.tree.expand(w)
    tab.tree.expand(model.index(1, 0, w))
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("w.23")
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("")
    w = model.index(0, 0)
    assert tab.tree.isExpanded(w) and tab.tree.isExpanded(model.index(1, 0, w))
    assert not tab.tree.isExpanded(model.index(0, 0, w))
    assert tab.findChild(QTreeView, "keyTree") is tab.tree


def test_expand_all_opens_ranges_and_the_filter_leads_into_them(qtbot, window, tmp_path):
    from PySide6.QtGui import QAction

    tab, model, w = opened_group(qtbot, window, tmp_path)
    tab.tree.resize(400, 300)
    window.findChild(QAction, "actionExpandAll").trigger()
    qtbot.waitUntil(lambda: not tab.expander.busy())
    first = model.index(0, 0, w)
    assert tab.tree.isExpanded(w) and tab.tree.isExpanded(first)
    assert not tab.tree.isExpanded(model.index(2, 0, w))  # far below the view
    window.findChild(QAction, "actionCollapseAll").trigger()
    assert not tab.tree.isExpanded(w)
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("w.1")
    assert tab.first_match().data(Qt.UserRole) == "w.1"


def test_ticking_a_range_repaints_the_boxes_of_its_rows(qtbot, window, tmp_path):
    from PySide6.QtCore import QEvent, QObject
    from PySide6.QtGui import QRegion

    tab, model, w = opened_group(qtbot, window, tmp_path)
    tab.tree.expand(w)
    first = model.index(0, 0, w)
    tab.tree.expand(first)
    qtbot.waitUntil(lambda: tab.tree.visualRect(model.index(3, 0, first)).isValid())
    QApplication.processEvents()
    tab.tree.viewport().repaint()  # nothing left to paint but what the tick asks for

    class Paints(QObject):
        region = QRegion()

        def eventFilter(self, watched, event) -> bool:
            if event.type() == QEvent.Paint:
                Paints.region = Paints.region.united(event.region())
            return False

    paints = Paints()
    tab.tree.viewport().installEventFilter(paints)
    model.setData(first, Qt.Checked, Qt.CheckStateRole)
    row = tab.tree.visualRect(model.index(3, 0, first))
    QApplication.processEvents()
    assert Paints.region.contains(row)
    tab.tree.viewport().removeEventFilter(paints)
