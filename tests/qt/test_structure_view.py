"""The Structure pane: the graph drawn, node <-> tree selection, find, export."""

from __future__ import annotations

import torch

from ckpt_viewer.qt.checkpoint_tab import CheckpointTab


def _structure(window, qtbot, path):
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([str(path)])
    tab = window.current_tab()
    assert isinstance(tab, CheckpointTab)
    tab.panes.setCurrentIndex(4)
    with qtbot.waitSignal(tab.structure.ready, timeout=30_000):
        pass
    return tab, tab.structure


def test_nodes_select_their_tensors_and_the_tree_finds_its_node(window, qtbot, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(model, tmp_path / "whole.pt")
    tab, view = _structure(window, qtbot, tmp_path / "whole.pt")
    assert set(view.boxes) == {name or "(model)" for name, _ in model.named_modules()}
    with qtbot.waitSignal(view.node_clicked, timeout=5_000):
        view.choose("2")
    assert tab.selected_key() == "2.weight"
    assert tab.panes.currentWidget() is view  # the graph stays in view
    tab.select_key("0.bias")
    assert view.selected == "0"
    view.find.setText("ReLU")
    assert view.selected == "1"  # marked at once; the tree follows when typing pauses
    with qtbot.waitSignal(view.node_clicked, timeout=5_000):
        view.find.setText("out_features=2")
        assert view.selected == "2" and tab.selected_key() == "0.bias"
    assert tab.selected_key() == "2.weight"
    assert view.export(str(tmp_path / "graph.png"))
    assert view.export(str(tmp_path / "graph.svg"))
    assert (tmp_path / "graph.png").stat().st_size > 0
    assert b"<svg" in (tmp_path / "graph.svg").read_bytes()[:400]


def test_collapsing_repeated_blocks_redraws(window, qtbot, tmp_path):
    layers = torch.nn.ModuleDict({"embed": torch.nn.Embedding(5, 4)})
    state = {
        f"layers.{i}.{k}": v
        for i in range(6)
        for k, v in torch.nn.Linear(4, 4).state_dict().items()
    }
    state.update({f"embed.{k}": v for k, v in layers["embed"].state_dict().items()})
    torch.save(state, tmp_path / "sd.pt")
    _, view = _structure(window, qtbot, tmp_path / "sd.pt")
    assert len(view.boxes) == 7
    with qtbot.waitSignal(view.ready, timeout=30_000):
        view.collapse_box.setChecked(True)
    assert len(view.boxes) == 2 and any("\u00d7 6" in n.label for n in view.graph.nodes)


def test_a_click_on_a_node_selects_its_tensors(window, qtbot, tmp_path):
    from PySide6.QtCore import Qt

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(model, tmp_path / "whole.pt")
    tab, view = _structure(window, qtbot, tmp_path / "whole.pt")
    where = view.view.mapFromScene(view.boxes["2"].center())
    with qtbot.waitSignal(view.node_clicked, timeout=5_000) as clicked:
        qtbot.mouseClick(view.view.viewport(), Qt.LeftButton, pos=where)
    assert clicked.args == ["2"] and view.selected == "2"
    assert tab.selected_key() == "2.weight"


def test_a_big_graph_is_drawn_by_a_few_batch_items(window, qtbot, tmp_path, monkeypatch):
    from ckpt_viewer.qt import structure_view

    monkeypatch.setattr(structure_view, "ALWAYS_COLLAPSE", 10**9)
    torch.save({f"m{i}x.weight": torch.zeros(1) for i in range(900)}, tmp_path / "long.pt")
    _, view = _structure(window, qtbot, tmp_path / "long.pt")
    assert len(view.boxes) == 900
    batches = -(-900 // structure_view.BATCH)
    assert len(view.scene.items()) == 2 * batches + 1  # nodes, edges, the selection mark
    assert view.choose("k:m899x") and view.selected == "k:m899x"


def test_a_big_graph_is_laid_out_in_a_child_as_here(monkeypatch):
    from ckpt_viewer.core.listing.graph import Graph, GraphNode, layout
    from ckpt_viewer.qt import structure_view

    graph = Graph("blocks", "a chain with a branch")
    graph.nodes = [GraphNode(f"n{i}", f"n\x1b{i}", "keys") for i in range(30)]
    graph.edges = [(f"n{i}", f"n{i + 1}", "") for i in range(29)] + [("n3", "n20", "")]
    monkeypatch.setattr(structure_view, "CHILD_LAYOUT", 10)
    runs = []
    import subprocess

    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: runs.append(a) or real(*a, **k))
    sizes = {n.id: (100.0, 30.0) for n in graph.nodes}
    assert structure_view._layout(graph, sizes) == layout(graph, sizes)
    assert len(runs) == 1


def test_the_controller_delivers_only_the_latest_request(qtbot, tmp_path):
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.qt import workers
    from ckpt_viewer.qt.structure_view import StructureController

    state = {f"layers.{i}.weight": torch.zeros(2) for i in range(5)}
    torch.save(state, tmp_path / "sd.pt")
    controller = StructureController(open_checkpoint(str(tmp_path / "sd.pt")))
    drawn = []
    controller.laid_out.connect(drawn.append)
    with workers.synchronous(False):  # jobs on threads, even under CKPT_VIEWER_SYNCHRONOUS=1
        controller.request(False)
        controller.request(True)  # supersedes the first
    qtbot.waitUntil(lambda: not controller.jobs.busy(), timeout=30_000)
    assert [d.collapse for d in drawn] == [True]
    assert [n.label for n in drawn[0].graph.nodes] == ["layers \u00d7 5"]


def test_hovering_a_node_shows_its_tensors(window, qtbot, tmp_path):
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QApplication, QToolTip

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(model, tmp_path / "whole.pt")
    _, view = _structure(window, qtbot, tmp_path / "whole.pt")
    viewport = view.view.viewport()
    where = view.view.mapFromScene(view.boxes["2"].center())
    QApplication.sendEvent(viewport, QHelpEvent(QEvent.ToolTip, where, viewport.mapToGlobal(where)))
    assert QToolTip.text().splitlines() == ["Linear", "2  in_features=8, out_features=2"] + [
        "2.weight",
        "2.bias",
    ]
    QToolTip.hideText()


def test_the_pane_opens_on_the_selected_tensor_and_a_click_under_a_filter_keeps_it(
    window, qtbot, tmp_path
):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([str(tmp_path / "sd.pt")])
    tab = window.current_tab()
    assert tab.select_key("2.weight")
    tab.panes.setCurrentIndex(4)
    with qtbot.waitSignal(tab.structure.ready, timeout=30_000):
        pass
    view = tab.structure
    assert view.selected == "2"  # marked on opening, not only after the next selection
    with qtbot.waitSignal(tab.filter_applied, timeout=10_000):
        tab.filter.setText("0.bias")  # hides layer 2's tensors
    with qtbot.waitSignal(view.node_clicked, timeout=5_000):
        view.choose("2")
    assert tab.selected_key() == "2.weight"
    assert tab.panes.currentWidget() is view  # the graph stays in view, not the Tensor tab
    with qtbot.waitSignal(view.ready, timeout=30_000):
        view.collapse_box.setChecked(True)  # drawn again: the tree's tensor stays marked
    assert view.selected is not None and view.selected == view.drawing.node_of_key["2.weight"]


def test_far_out_every_box_is_still_drawn_in_its_colour(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtCore import QPointF, QRectF
    from PySide6.QtGui import QColor, QImage, QPainter

    from ckpt_viewer.qt import structure_view

    monkeypatch.setattr(structure_view, "ALWAYS_COLLAPSE", 10**9)
    torch.save({f"m{i}x.weight": torch.zeros(1) for i in range(300)}, tmp_path / "long.pt")
    _, view = _structure(window, qtbot, tmp_path / "long.pt")
    source = view.scene.sceneRect()
    green = QColor(structure_view.KIND_COLOURS["keys"])  # the blocks the keys imply
    light = green.lighter(170).rgb()

    def drawn(scale: float, at: QPointF) -> tuple[QImage, list]:
        image = QImage(
            int(source.width() * scale) + 1, int(source.height() * scale) + 1, QImage.Format_RGB32
        )
        image.fill(QColor("white"))
        painter = QPainter(image)
        view.scene.render(painter, QRectF(image.rect()), source)
        painter.end()
        points = [(box.topRight() + at - source.topLeft()) * scale for box in view.boxes.values()]
        return image, [image.pixel(p.toPoint()) for p in points]

    tiny = structure_view.TINY * 0.8  # too small for an outline: a box is filled with its colour
    first = view.boxes["k:m0x"]
    image, colours = drawn(tiny, QPointF(-first.width() / 2, first.height() / 2))
    assert len(colours) == 300 and all(c == green.rgb() for c in colours)
    image, colours = drawn(1.0, QPointF(-3, 3))  # the lighter fill inside it, clear of the text
    assert all(c == light for c in colours)
    box = first.translated(-source.topLeft())
    assert image.pixel(QPointF(box.left(), box.center().y()).toPoint()) == green.rgb()  # outline


def test_find_searches_labels_details_and_tensor_keys(window, qtbot, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    torch.save(model, tmp_path / "whole.pt")
    _, view = _structure(window, qtbot, tmp_path / "whole.pt")
    view.find.setText("OUT_FEATURES=2")  # a hyperparameter, in any case
    assert view.found == ["2"]
    view.find.setText("0.bias")  # a tensor key
    assert view.found == ["0"]
    view.find.setText("linear")  # labels: both Linear layers, Enter goes to the next
    assert view.found == ["0", "2"] and view.selected == "0"
    view._find_next()
    assert view.selected == "2"
