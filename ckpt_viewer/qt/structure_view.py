"""The Structure pane: the model's graph (core.listing.graph) laid out by grandalf in a worker
(a big graph's in a child process, which does not share the GUI thread's GIL); the worker also
builds the geometry (node boxes and edge paths, in spatial batches), so the GUI
thread only adds one item per batch; text is drawn only where it is readable. Pan (drag), zoom
(wheel), find, repeated blocks collapsed or expanded, export as PNG or SVG. A click on a node
selects its tensors in the key tree; selecting a tensor in the tree marks its node."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGraphicsItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStyleOptionGraphicsItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core import paused_gc
from ckpt_viewer.qt import workers

if TYPE_CHECKING:  # imported by the worker that uses it: not part of the pane's first opening
    from ckpt_viewer.core.listing.graph import Graph, GraphNode

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
BATCH = 200  # nodes (or edges) drawn by one scene item
ALWAYS_COLLAPSE = 400  # nodes: beyond this the graph opens collapsed
PLAIN_DRAWING = 500  # nodes: beyond this, straight edges without antialiasing (paint time)
READABLE = 0.45  # scale below which node text is not drawn (too small to read)
TINY = 0.15  # scale below which boxes are filled without an outline and edges lose their heads
EDGE_LABELS = 0.8  # scale from which edge labels (tensor shapes) are drawn
CHILD_LAYOUT = 1000  # nodes: from here grandalf runs in a child process
FIT_SMALLEST = 0.8  # scale below which a graph opens at 1:1 instead of fitted (text too small)


def _size(node: GraphNode) -> tuple[float, float]:
    chars = max(len(node.label), min(len(node.detail), DETAIL_CHARS))
    lines = 2 if node.detail else 1
    return chars * CHAR_WIDTH + 2 * PADDING, lines * LINE_HEIGHT + PADDING


@dataclass
class Drawing:
    """A laid-out graph and its geometry, built off the GUI thread."""

    graph: Graph
    full_size: int  # nodes before collapsing
    collapse: bool
    bounds: QRectF
    plain: bool
    boxes: dict[str, QRectF] = field(default_factory=dict)  # node id -> its box
    node_batches: list[NodeBatch] = field(default_factory=list)
    edge_batches: list[tuple[QRectF, QPainterPath, QPainterPath, list]] = field(
        default_factory=list
    )  # (bounds, lines, arrow heads, [(x, y, label)])
    node_of_key: dict[str, str] = field(default_factory=dict)  # tensor key -> its first node
    # (node id, its label, detail and keys lowercased, a line each): what find searches
    search: list[tuple[str, str]] = field(default_factory=list)

    def node_at(self, point: QPointF) -> str | None:
        for batch in self.node_batches:
            if batch.bounds.contains(point):
                for node in batch.nodes:
                    if self.boxes[node.id].contains(point):
                        return node.id
        return None


@dataclass
class NodeBatch:
    """Nearby nodes drawn by one scene item, grouped as it paints them (built off the GUI
    thread, so adding the item costs the GUI thread nothing per node)."""

    bounds: QRectF
    nodes: list[GraphNode]
    groups: dict[str, list[QRectF]]  # colour -> boxes
    texts: list[tuple[QRectF, str, str]]  # box, label, detail


def _node_batch(nodes: list[GraphNode], boxes: dict[str, QRectF]) -> NodeBatch:
    groups: dict[str, list[QRectF]] = {}
    for node in nodes:
        groups.setdefault(KIND_COLOURS.get(node.kind, "#bab0ac"), []).append(boxes[node.id])
    texts = [(boxes[n.id], n.label, n.detail[:DETAIL_CHARS]) for n in nodes]
    bounds = _united([boxes[n.id] for n in nodes]).adjusted(-1, -1, 1, 1)  # the outline's width
    return NodeBatch(bounds, nodes, groups, texts)


def graph_job(checkpoint, collapse: bool | None) -> Drawing:
    """The graph built, laid out and turned into geometry off the GUI thread, with the
    collector paused and what it built frozen (as a load does): a full collection in this
    thread would hold the GUI thread as long as it walks."""
    with paused_gc(freeze=True):
        return _graph_job(checkpoint, collapse)


def _graph_job(checkpoint, collapse: bool | None) -> Drawing:
    from ckpt_viewer.core.listing.graph import collapsed, model_graph

    full = model_graph(checkpoint)
    if collapse is None:
        collapse = len(full.nodes) > ALWAYS_COLLAPSE
    graph = collapsed(full) if collapse else full
    sizes = {n.id: _size(n) for n in graph.nodes}
    positions = _layout(graph, sizes)
    drawing = Drawing(graph, len(full.nodes), collapse, QRectF(), len(graph.nodes) > PLAIN_DRAWING)
    for node in graph.nodes:
        x, y = positions.get(node.id, (0.0, 0.0))
        w, h = sizes[node.id]
        drawing.boxes[node.id] = QRectF(x - w / 2, y - h / 2, w, h)
    for node in reversed(graph.nodes):  # the first node holding a key wins
        for key in node.keys:
            drawing.node_of_key[key] = node.id
    drawing.search = [(n.id, "\n".join([n.label, n.detail, *n.keys]).lower()) for n in graph.nodes]
    # batches of nearby nodes (by row, then across): each batch's item paints only when its
    # bounds are in view
    placed = sorted(graph.nodes, key=lambda n: (drawing.boxes[n.id].y(), drawing.boxes[n.id].x()))
    for start in range(0, len(placed), BATCH):
        drawing.node_batches.append(_node_batch(placed[start : start + BATCH], drawing.boxes))
    edges = [
        (a, b, label) for a, b, label in graph.edges if a in drawing.boxes and b in drawing.boxes
    ]
    edges.sort(key=lambda e: (drawing.boxes[e[0]].bottom(), drawing.boxes[e[0]].center().x()))
    for start in range(0, len(edges), BATCH):
        drawing.edge_batches.append(_edge_batch(drawing, edges[start : start + BATCH]))
    every = [b.bounds for b in drawing.node_batches] or [QRectF(0, 0, 1, 1)]
    drawing.bounds = _united(every).adjusted(-20, -20, 20, 20)
    return drawing


def _layout(graph: Graph, sizes: dict) -> dict[str, tuple[float, float]]:
    """layout(), for a big graph in a child process: this thread would hold the GIL the GUI
    thread needs for as long as grandalf runs (in the child if it can start, else here). The
    child runs at a lower priority: on a busy machine it would otherwise take the CPU the GUI
    thread needs to keep up."""
    from ckpt_viewer.core.listing.graph import Graph, GraphNode, layout

    if len(graph.nodes) < CHILD_LAYOUT or getattr(sys, "frozen", False):  # no `python -c`
        return layout(graph, sizes)
    import pickle
    import subprocess  # here, on the worker: its import is not the GUI thread's first-open cost

    # only what the layout reads: pickling holds the GIL in one C call, and the whole graph's
    # labels, details and keys made that call long enough to stall the GUI thread
    bare = Graph(
        graph.kind,
        "",
        [GraphNode(node.id, "", node.kind) for node in graph.nodes],
        [(a, b, "") for a, b, _ in graph.edges],
    )

    code = (
        "import os, pickle, sys\n"
        "hasattr(os, 'nice') and os.nice(10)\n"
        "from ckpt_viewer.core.listing.graph import layout\n"
        "graph, sizes = pickle.load(sys.stdin.buffer)\n"
        "pickle.dump(layout(graph, sizes), sys.stdout.buffer)\n"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", code],
            input=pickle.dumps((bare, sizes)),
            capture_output=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            creationflags=getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0),  # Windows
        )
        if child.returncode == 0:
            return pickle.loads(child.stdout)  # our own child's answer, not the file's
    except OSError:
        pass
    return layout(graph, sizes)


def _united(rects: list[QRectF]) -> QRectF:
    left = min(r.left() for r in rects)
    top = min(r.top() for r in rects)
    right = max(r.right() for r in rects)
    bottom = max(r.bottom() for r in rects)
    return QRectF(left, top, right - left, bottom - top)


def _edge_batch(drawing: Drawing, edges: list) -> tuple[QRectF, QPainterPath, QPainterPath, list]:
    lines, heads, labels = QPainterPath(), QPainterPath(), []
    for a, b, label in edges:
        x1, y1 = drawing.boxes[a].center().x(), drawing.boxes[a].bottom()
        x2, y2 = drawing.boxes[b].center().x(), drawing.boxes[b].top()
        lines.moveTo(x1, y1)
        if drawing.plain:
            lines.lineTo(x2, y2)
        else:
            middle = (y1 + y2) / 2
            lines.cubicTo(x1, middle, x2, middle, x2, y2)
        heads.moveTo(x2, y2)
        heads.lineTo(x2 - 4, y2 - 7)
        heads.lineTo(x2 + 4, y2 - 7)
        heads.closeSubpath()
        if label:
            labels.append(((x1 + x2) / 2 + 6, (y1 + y2) / 2 + 4, label))
    bounds = lines.boundingRect().united(heads.boundingRect()).adjusted(-2, -2, 120, 2)
    return bounds, lines, heads, labels


class _Nodes(QGraphicsItem):
    """A batch of node boxes; labels drawn only at a readable scale, and only those exposed;
    boxes too small to show an outline are filled with its colour."""

    def __init__(self, batch: NodeBatch):
        super().__init__()
        self.bounds, self.texts = batch.bounds, batch.texts
        self.setFlag(QGraphicsItem.ItemUsesExtendedStyleOption)
        self.groups = []  # (outline, fill, fill when too small for an outline, boxes)
        for colour, rects in batch.groups.items():
            edge = QColor(colour)
            self.groups.append((QPen(edge, 1.5), QBrush(edge.lighter(170)), QBrush(edge), rects))

    def boundingRect(self) -> QRectF:
        return self.bounds

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: Any = None):
        scale = option.levelOfDetailFromTransform(painter.worldTransform())
        for outline, fill, solid, rects in self.groups:
            if scale < TINY:
                painter.setPen(Qt.NoPen)
                painter.setBrush(solid)
            else:
                painter.setPen(outline)
                painter.setBrush(fill)
            painter.drawRects(rects)
        if scale < READABLE:
            return
        exposed = option.exposedRect
        label, detail = QColor("#101010"), QColor("#404040")
        baseline = PADDING / 2 + painter.fontMetrics().ascent()
        for box, text, more in self.texts:
            if not box.intersects(exposed):
                continue
            left, top = box.left() + PADDING, box.top() + baseline
            painter.setPen(label)
            painter.drawText(QPointF(left, top), text)
            if more:
                painter.setPen(detail)
                painter.drawText(QPointF(left, top + LINE_HEIGHT), more)


class _Edges(QGraphicsItem):
    """A batch of edges as two paths (lines, arrow heads), their labels (tensor shapes) drawn
    when zoomed in."""

    def __init__(self, bounds: QRectF, lines: QPainterPath, heads: QPainterPath, labels: list):
        super().__init__()
        self.bounds, self.lines, self.heads, self.labels = bounds, lines, heads, labels
        self.colour = QColor(Qt.black)
        self.setZValue(-1)

    def boundingRect(self) -> QRectF:
        return self.bounds

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: Any = None):
        scale = option.levelOfDetailFromTransform(painter.worldTransform())
        pen = QPen(self.colour, 1)
        pen.setCosmetic(scale < 1)  # one pixel wide however far out, the cheap way to stroke
        painter.setPen(pen)
        painter.setBrush(Qt.NoBrush)
        painter.drawPath(self.lines)
        if scale < TINY:
            return
        painter.setPen(Qt.NoPen)
        painter.setBrush(QBrush(self.colour))
        painter.drawPath(self.heads)
        if self.labels and scale >= EDGE_LABELS:
            painter.setPen(self.colour)
            for x, y, text in self.labels:
                painter.drawText(QPointF(x, y), text)


class StructureController(QObject):
    """What the pane computes: the checkpoint's graph laid out into a Drawing (slot "layout",
    a new request supersedes the old one). It only emits results; the view shows them."""

    laid_out = Signal(object)  # a Drawing
    failed = Signal(str)  # one line

    def __init__(self, checkpoint, parent: QObject | None = None):
        super().__init__(parent)
        self.checkpoint = checkpoint
        self.jobs = workers.Controller(self)

    def request(self, collapse: bool | None) -> None:
        """Lay out the graph, collapsed or not (None: by its size)."""
        self.jobs.start(
            "layout",
            graph_job,
            self.checkpoint,
            collapse,
            on_result=self.laid_out.emit,
            on_error=self.failed.emit,
            label="laying out the structure",
        )

    def cancel(self) -> None:
        self.jobs.cancel()


class _View(QGraphicsView):
    clicked = Signal(QPointF)  # a click (not a drag), in scene coordinates
    hovered = Signal(QPointF, object)  # a tooltip request: scene point, global position

    def wheelEvent(self, event):
        factor = 1.2 if event.angleDelta().y() > 0 else 1 / 1.2
        self.scale(factor, factor)

    def mousePressEvent(self, event):
        self.pressed = event.position()
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event):
        super().mouseReleaseEvent(event)
        moved = event.position() - getattr(self, "pressed", event.position())
        if event.button() == Qt.LeftButton and moved.manhattanLength() < 4:
            self.clicked.emit(self.mapToScene(event.position().toPoint()))

    def viewportEvent(self, event):
        if event.type() == QEvent.ToolTip:
            self.hovered.emit(self.mapToScene(event.pos()), event.globalPos())
            return True
        return super().viewportEvent(event)


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
        self.drawing: Drawing | None = None
        self.boxes: dict[str, QRectF] = {}  # node id -> its box, as drawn
        self.selected: str | None = None  # the marked node
        self.tree_key = ""  # the tree's selected tensor: its node is marked once drawn
        self.found: list[str] = []
        self.controller = StructureController(checkpoint, self)
        self.controller.laid_out.connect(self._laid_out)
        self.controller.failed.connect(self._failed)
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
        # a match is marked at each key; the tree follows once typing pauses: selecting there
        # (the tensor pane, its statistics) cost more than a frame per key
        self.find_select = QTimer(self)
        self.find_select.setSingleShot(True)
        self.find_select.setInterval(250)
        self.find_select.timeout.connect(self._select_found)
        png, svg = QPushButton("Export PNG..."), QPushButton("Export SVG...")
        png.clicked.connect(lambda: self._export("png"))
        svg.clicked.connect(lambda: self._export("svg"))
        controls = QHBoxLayout()
        for widget in (self.collapse_box, self.find, png, svg):
            controls.addWidget(widget)
        self.scene = QGraphicsScene(self)
        self.scene.setItemIndexMethod(QGraphicsScene.NoIndex)  # a few items: one per batch
        self.view = _View(self.scene)
        self.view.setObjectName("structureGraph")
        self.view.setDragMode(QGraphicsView.ScrollHandDrag)
        self.view.setRenderHint(QPainter.Antialiasing)
        self.view.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        self.view.clicked.connect(self._clicked)
        self.view.hovered.connect(self._tooltip)
        self.mark = QGraphicsRectItem()
        self.mark.setPen(QPen(QColor("#e15759"), 3))
        self.mark.setZValue(1)
        layout_ = QVBoxLayout(self)
        layout_.addLayout(controls)
        layout_.addWidget(self.status)
        layout_.addWidget(self.view, 1)
        # once the pane is on screen: its first layout and paint need not share the CPU and the
        # GIL with the job's graph building
        QTimer.singleShot(0, self, lambda: self.controller.request(None))

    # --- work -------------------------------------------------------------------------

    def _collapse_toggled(self, on: bool) -> None:
        if self.graph is not None:
            self.status.setText("Laying out the model's structure...")
            self.controller.request(on)

    def _failed(self, message: str) -> None:
        self.status.setText(f"Structure failed: {message}")
        self.failed.emit(message)

    def _laid_out(self, drawing: Drawing) -> None:
        graph = drawing.graph
        self.drawing, self.graph, self.boxes = drawing, graph, drawing.boxes
        self.selected, self.found = None, []
        self.collapse_box.blockSignals(True)
        self.collapse_box.setChecked(drawing.collapse)
        self.collapse_box.blockSignals(False)
        if self.mark.scene() is not None:  # kept: clear() deletes the items it holds
            self.scene.removeItem(self.mark)
        self.scene.clear()
        self.mark.hide()
        self.scene.addItem(self.mark)
        self.view.setRenderHint(QPainter.Antialiasing, not drawing.plain)
        what = f"{len(graph.nodes):,} nodes, {len(graph.edges):,} edges"
        if len(graph.nodes) != drawing.full_size:
            what += f" ({drawing.full_size:,} before collapsing repeated blocks)"
        notes = f"; {'; '.join(graph.notes)}" if graph.notes else ""
        self.status.setText(
            f"From {graph.source}: {what}{notes}. Click a node to select its "
            "tensors; drag to pan, wheel to zoom."
        )
        colour = self.palette().color(QPalette.Text)
        for bounds, lines, heads, labels in drawing.edge_batches:
            edges = _Edges(bounds, lines, heads, labels)
            edges.colour = colour
            self.scene.addItem(edges)
        for batch in drawing.node_batches:
            self.scene.addItem(_Nodes(batch))
        self.scene.setSceneRect(drawing.bounds)
        self.view.fitInView(drawing.bounds, Qt.KeepAspectRatio)
        scale = self.view.transform().m11()
        if scale > 1 or scale < FIT_SMALLEST:  # 1:1, all of it or, too small to read, its top
            self.view.resetTransform()
            top = drawing.bounds.center() if scale > 1 else drawing.bounds.topLeft()
            self.view.centerOn(drawing.bounds.center().x(), top.y())
        self.highlight_key(self.tree_key)
        self.ready.emit(graph)

    # --- interaction ------------------------------------------------------------------

    def _clicked(self, point: QPointF) -> None:
        if self.drawing is None:
            return
        node_id = self.drawing.node_at(point)
        if node_id is not None:
            self.choose(node_id, centre=False)

    def _tooltip(self, point: QPointF, where) -> None:
        node_id = self.drawing.node_at(point) if self.drawing is not None else None
        node = self.graph.node(node_id) if node_id is not None and self.graph else None
        if node is None:
            QToolTip.hideText()
            return
        tip = (
            [node.label, node.detail]
            + node.keys[:12]
            + ([f"... {len(node.keys) - 12:,} more tensors"] if len(node.keys) > 12 else [])
        )
        QToolTip.showText(where, "\n".join(t for t in tip if t), self.view)

    def _mark(self, node_id: str, centre: bool = True) -> None:
        box = self.boxes[node_id]
        self.selected = node_id
        self.mark.setRect(box.adjusted(-2, -2, 2, 2))
        self.mark.show()
        if centre:
            self.view.centerOn(box.center())

    def choose(self, node_id: str, centre: bool = True) -> bool:
        """Mark a node and select its tensors in the tree."""
        if node_id not in self.boxes or self.graph is None:
            return False
        self._mark(node_id, centre)
        node = self.graph.node(node_id)
        self.node_clicked.emit(node_id)
        if self.select is not None and node is not None and node.keys:
            self.select(node.keys)
        return True

    def highlight_key(self, key: str) -> None:
        """The tree selected `key`: mark the node that holds it (without selecting back); before
        the graph is drawn, once it is."""
        self.tree_key = key
        if self.drawing is None:
            return
        node_id = self.drawing.node_of_key.get(key)
        if node_id is not None and node_id in self.boxes:
            self._mark(node_id)

    def _find(self, text: str) -> None:
        text = text.strip().lower()
        self.found = []
        if not text or self.drawing is None:
            return
        # one line of text has no line break: a match is within one of a node's lines
        self.found = [node_id for node_id, lines in self.drawing.search if text in lines]
        if self.found and self.found[0] in self.boxes:
            self._mark(self.found[0])
            self.find_select.start()

    def _select_found(self) -> None:
        if self.found:
            self.choose(self.found[0], centre=False)

    def _find_next(self) -> None:
        self.find_select.stop()
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

    def _export(self, kind: str) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            f"Export the structure as {kind.upper()}",
            f"structure.{kind}",
            f"{kind.upper()} (*.{kind})",
        )
        if path:
            self.export(path)
