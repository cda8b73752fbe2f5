"""The Structure pane: the model's graph (core.listing.graph) laid out by grandalf in a worker,
drawn in batches so the window never waits; pan (drag), zoom (wheel), find, repeated blocks
collapsed or expanded, export as PNG or SVG. A click on a node selects its tensors in the key
tree; selecting a tensor in the tree highlights its node."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.graph import Graph, collapsed, layout, model_graph
from ckpt_viewer.qt import workers

KIND_COLOURS = {
    "op": "#4e79a7",
    "module": "#4e79a7",
    "block": "#b07aa1",
    "keys": "#59a14f",
    "parameter": "#59a14f",
    "buffer": "#76b7b2",
    "constant": "#9c755f",
    "input": "#f28e2b",
    "output": "#e15759",
}
CHAR_WIDTH, LINE_HEIGHT, PADDING = 7.0, 15.0, 8.0
DETAIL_CHARS = 48
ITEMS_PER_STEP = 100  # scene items added per event-loop turn
ALWAYS_COLLAPSE = 400  # nodes: beyond this the graph opens collapsed
BSP_DEPTH = 12
PLAIN_DRAWING = 500  # nodes: beyond this, straight edges without antialiasing (paint time)


def _size(node) -> tuple[float, float]:
    chars = max(len(node.label), min(len(node.detail), DETAIL_CHARS))
    lines = 2 if node.detail else 1
    return chars * CHAR_WIDTH + 2 * PADDING, lines * LINE_HEIGHT + PADDING


def graph_job(checkpoint, collapse: bool | None):
    """(graph drawn, its full size in nodes, positions, scene bounds): built and laid out off
    the GUI thread, with the collector paused and what it built frozen (as a load does): a
    full collection in this thread would hold the GUI thread as long as it walks."""
    with paused_gc(freeze=True):
        return _graph_job(checkpoint, collapse)


def _graph_job(checkpoint, collapse: bool | None):
    full = model_graph(checkpoint)
    if collapse is None:
        collapse = len(full.nodes) > ALWAYS_COLLAPSE
    graph = collapsed(full) if collapse else full
    sizes = {n.id: _size(n) for n in graph.nodes}
    positions = layout(graph, sizes)
    corners = [
        (x - sizes[i][0] / 2, y - sizes[i][1] / 2, x + sizes[i][0] / 2, y + sizes[i][1] / 2)
        for i, (x, y) in positions.items()
    ] or [(0.0, 0.0, 1.0, 1.0)]
    bounds = QRectF(
        min(c[0] for c in corners),
        min(c[1] for c in corners),
        max(c[2] for c in corners) - min(c[0] for c in corners),
        max(c[3] for c in corners) - min(c[1] for c in corners),
    ).adjusted(-20, -20, 20, 20)  # known here: no pass over the drawn items afterwards
    return graph, len(full.nodes), collapse, positions, bounds


class _View(QGraphicsView):
    def wheelEvent(self, event):
        factor = 1.2 if event.angleDelta().y() > 0 else 1 / 1.2
        self.scale(factor, factor)


class StructureView(QWidget):
    """`select(keys)` is called with a clicked node's tensor keys."""

    ready = Signal(object)  # the Graph, drawn
    node_clicked = Signal(str)  # node id
    failed = Signal(str)

    def __init__(self, checkpoint, select=None, parent=None):
        super().__init__(parent)
        self.setObjectName("structureView")
        self.checkpoint, self.select = checkpoint, select
        self.graph: Graph | None = None
        self.boxes: dict = {}  # node id -> QGraphicsRectItem
        self.plain = False  # a big graph: straight edges, no antialiasing
        self.node_of_key: dict = {}  # tensor key -> the node that holds it
        self.found: list = []
        self.generation = 0
        self.jobs = workers.Controller(self)
        self.status = QLabel("Laying out the model's structure...")
        self.status.setObjectName("structureStatus")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)
        self.collapse_box = QCheckBox("collapse repeated blocks")
        self.collapse_box.setObjectName("structureCollapse")
        self.collapse_box.toggled.connect(self._collapse_toggled)
        self.find = QLineEdit()
        self.find.setObjectName("structureFind")
        self.find.setPlaceholderText("Find a node (Enter: next)")
        self.find.setClearButtonEnabled(True)
        self.find.textChanged.connect(self._find)
        self.find.returnPressed.connect(self._find_next)
        png, svg = QPushButton("Export PNG..."), QPushButton("Export SVG...")
        png.clicked.connect(lambda: self._export("png"))
        svg.clicked.connect(lambda: self._export("svg"))
        controls = QHBoxLayout()
        for widget in (self.collapse_box, self.find, png, svg):
            controls.addWidget(widget)
        self.scene = QGraphicsScene(self)
        # a fixed depth: the index takes each batch as it is drawn instead of being rebuilt
        # for the whole graph at its first paint
        self.scene.setBspTreeDepth(BSP_DEPTH)
        self.view = _View(self.scene)
        self.view.setObjectName("structureGraph")
        self.view.setDragMode(QGraphicsView.ScrollHandDrag)
        self.view.setRenderHint(QPainter.Antialiasing)
        self.view.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.scene.selectionChanged.connect(self._selection_changed)
        layout_ = QVBoxLayout(self)
        layout_.addLayout(controls)
        layout_.addWidget(self.status)
        layout_.addWidget(self.view, 1)
        self._start(None)

    # --- work -------------------------------------------------------------------------

    def _start(self, collapse):
        self.generation += 1
        self.jobs.start(
            "layout",
            graph_job,
            self.checkpoint,
            collapse,
            on_result=self._laid_out,
            on_error=self._failed,
        )

    def _collapse_toggled(self, on):
        if self.graph is not None:
            self.status.setText("Laying out the model's structure...")
            self._start(on)

    def _failed(self, message):
        self.status.setText(f"Structure failed: {message}")
        self.failed.emit(message)

    def _laid_out(self, result):
        if result is None:
            return
        graph, full_size, collapse, positions, bounds = result
        self.graph = graph
        self.node_of_key = {
            key: n.id for n in reversed(graph.nodes) for key in n.keys
        }  # first wins
        self.collapse_box.blockSignals(True)
        self.collapse_box.setChecked(collapse)
        self.collapse_box.blockSignals(False)
        self.scene.clear()
        self.boxes = {}
        self.plain = len(graph.nodes) > PLAIN_DRAWING
        self.view.setRenderHint(QPainter.Antialiasing, not self.plain)
        what = f"{len(graph.nodes):,} nodes, {len(graph.edges):,} edges"
        if len(graph.nodes) != full_size:
            what += f" ({full_size:,} before collapsing repeated blocks)"
        notes = f"; {'; '.join(graph.notes)}" if graph.notes else ""
        self.status.setText(
            f"From {graph.source}: {what}{notes}. Click a node to select its "
            "tensors; drag to pan, wheel to zoom."
        )
        items = [("node", n) for n in graph.nodes] + [("edge", e) for e in graph.edges]
        generation = self.generation
        self.scene.setSceneRect(bounds)
        QTimer.singleShot(0, self, lambda: self._draw_step(generation, items, positions))

    def _draw_step(self, generation, items, positions):
        if generation != self.generation:
            return
        text = self.palette().color(QPalette.Text)
        for what, item in items[:ITEMS_PER_STEP]:
            if what == "node":
                self._add_node(item, positions, text)
            else:
                self._add_edge(item, positions, text)
        self.scene.items(QRectF(0, 0, 1, 1))  # index this batch now, a little each step
        rest = items[ITEMS_PER_STEP:]
        if rest:
            QTimer.singleShot(0, self, lambda: self._draw_step(generation, rest, positions))
            return
        self.view.fitInView(self.scene.sceneRect(), Qt.KeepAspectRatio)
        if self.view.transform().m11() < 0.35:  # too small to read: start at 1:1, at the top
            self.view.resetTransform()
            self.view.centerOn(self.scene.sceneRect().center().x(), self.scene.sceneRect().top())
        self.ready.emit(self.graph)

    def _add_node(self, node, positions, text):
        x, y = positions.get(node.id, (0.0, 0.0))
        w, h = _size(node)
        box = QGraphicsRectItem(QRectF(x - w / 2, y - h / 2, w, h))
        colour = QColor(KIND_COLOURS.get(node.kind, "#bab0ac"))
        box.setBrush(QBrush(colour.lighter(170)))
        box.setPen(QPen(colour, 1.5))
        box.setFlag(QGraphicsRectItem.ItemIsSelectable)
        box.setData(0, node.id)
        tip = (
            [node.label, node.detail]
            + node.keys[:12]
            + ([f"... {len(node.keys) - 12:,} more tensors"] if len(node.keys) > 12 else [])
        )
        box.setToolTip("\n".join(t for t in tip if t))
        label = QGraphicsSimpleTextItem(node.label, box)
        label.setBrush(QBrush(QColor("#101010")))
        label.setPos(x - w / 2 + PADDING, y - h / 2 + PADDING / 2)
        if node.detail:
            detail = QGraphicsSimpleTextItem(node.detail[:DETAIL_CHARS], box)
            detail.setBrush(QBrush(QColor("#404040")))
            detail.setPos(x - w / 2 + PADDING, y - h / 2 + PADDING / 2 + LINE_HEIGHT)
        self.scene.addItem(box)
        self.boxes[node.id] = box

    def _add_edge(self, edge, positions, text):
        a, b, label = edge
        if a not in positions or b not in positions:
            return
        (x1, y1), (x2, y2) = positions[a], positions[b]
        y1 += self.boxes[a].rect().height() / 2 if a in self.boxes else 0
        y2 -= self.boxes[b].rect().height() / 2 if b in self.boxes else 0
        path = QPainterPath()
        path.moveTo(x1, y1)
        if self.plain:
            path.lineTo(x2, y2)
        else:
            middle = (y1 + y2) / 2
            path.cubicTo(x1, middle, x2, middle, x2, y2)
        line = QGraphicsPathItem(path)
        line.setPen(QPen(text, 1))
        line.setZValue(-1)
        if label:
            line.setToolTip(label)
        self.scene.addItem(line)
        arrow = QPainterPath()
        arrow.moveTo(x2, y2)
        arrow.lineTo(x2 - 4, y2 - 7)
        arrow.lineTo(x2 + 4, y2 - 7)
        arrow.closeSubpath()
        head = QGraphicsPathItem(arrow)
        head.setBrush(QBrush(text))
        head.setPen(QPen(Qt.NoPen))
        self.scene.addItem(head)

    # --- interaction ------------------------------------------------------------------

    def _selection_changed(self):
        chosen = [i for i in self.scene.selectedItems() if i.data(0)]
        if not chosen or self.graph is None:
            return
        node = self.graph.node(chosen[0].data(0))
        if node is None:
            return
        self.node_clicked.emit(node.id)
        if self.select is not None and node.keys:
            self.select(node.keys)

    def choose(self, node_id: str) -> bool:
        box = self.boxes.get(node_id)
        if box is None:
            return False
        self.scene.clearSelection()
        box.setSelected(True)
        self.view.centerOn(box)
        return True

    def highlight_key(self, key: str):
        """The tree selected `key`: mark the node that holds it (without selecting back)."""
        if self.graph is None:
            return
        node_id = self.node_of_key.get(key)
        if node_id is None or node_id not in self.boxes:
            return
        self.scene.blockSignals(True)
        self.scene.clearSelection()
        self.boxes[node_id].setSelected(True)
        self.scene.blockSignals(False)
        self.view.centerOn(self.boxes[node_id])

    def _find(self, text):
        text = text.strip().lower()
        self.found = []
        if not text or self.graph is None:
            return
        self.found = [
            n.id
            for n in self.graph.nodes
            if text in n.label.lower()
            or text in n.detail.lower()
            or any(text in k.lower() for k in n.keys)
        ]
        if self.found:
            self.choose(self.found[0])

    def _find_next(self):
        if self.found:
            self.found.append(self.found.pop(0))
            self.choose(self.found[0])

    def export(self, path: str) -> bool:
        """The whole graph as PNG or SVG (by the file's suffix)."""
        rect = self.scene.sceneRect()
        if path.lower().endswith(".svg"):
            from PySide6.QtSvg import QSvgGenerator

            generator = QSvgGenerator()
            generator.setFileName(path)
            generator.setSize(QSize(int(rect.width()), int(rect.height())))
            generator.setViewBox(QRectF(0, 0, rect.width(), rect.height()))
            painter = QPainter(generator)
            self.scene.render(painter, QRectF(0, 0, rect.width(), rect.height()), rect)
            painter.end()
            return True
        image = QImage(int(rect.width()), int(rect.height()), QImage.Format_ARGB32)
        image.fill(self.palette().color(QPalette.Base))
        painter = QPainter(image)
        painter.setRenderHint(QPainter.Antialiasing)
        self.scene.render(painter, QRectF(image.rect()), rect)
        painter.end()
        return image.save(path)

    def _export(self, kind):
        path, _ = QFileDialog.getSaveFileName(
            self,
            f"Export the structure as {kind.upper()}",
            f"structure.{kind}",
            f"{kind.upper()} (*.{kind})",
        )
        if path:
            self.export(path)
