"""The Bytes pane: where a checkpoint's bytes are, as a nested treemap of its modules (squarify
lays it out), sized by bytes or elements and coloured by role or dtype; hover shows a block's
totals, a click selects it in the key tree; below it, what the model needs to run."""

from __future__ import annotations

import squarify
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.footprint import (
    ROLE_TEXT,
    ROLES,
    Block,
    bytes_map,
    memory_lines,
    memory_needs,
)
from ckpt_viewer.core.listing.model import Checkpoint, format_bytes, format_count
from ckpt_viewer.core.listing.text import plural, safe_text
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import as_html

ROLE_COLOURS = {
    "parameters": "#4e79a7",
    "buffers": "#59a14f",
    "optimizer_state": "#f28e2b",
    "other": "#9c755f",
}
DTYPE_PALETTE = ("#4e79a7", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
MAX_DEPTH = 4  # nesting levels drawn
MAX_CHILDREN = 200  # per block; the rest is drawn as one "n more" block
MIN_SIDE = 3.0  # pixels: smaller blocks are not drawn (their parent's colour shows)
PAD = 2.0  # a parent's frame around its children, and room for its label
LABEL_HEIGHT = 14.0
RESIZE_SETTLE_MS = 80  # a resize redraws once it pauses


def _layout(block: Block, rect: QRectF, size_of, level: int, out: list) -> None:
    """(rect, block, level) of block's children inside rect, recursively."""
    children = [c for c in block.children.values() if size_of(c) > 0]
    children.sort(key=size_of, reverse=True)
    rest = children[MAX_CHILDREN:]
    children = children[:MAX_CHILDREN]
    if rest:
        others = Block(block.path, f"{len(rest):,} more")
        for c in rest:
            others.bytes += c.bytes
            others.elements += c.elements
            others.tensors += c.tensors
            for role, value in c.by_role.items():
                others.by_role[role] = others.by_role.get(role, 0) + value
            for dtype, value in c.by_dtype.items():
                others.by_dtype[dtype] = others.by_dtype.get(dtype, 0) + value
        children.append(others)
    if not children or rect.width() < MIN_SIDE or rect.height() < MIN_SIDE:
        return
    sizes = squarify.normalize_sizes([size_of(c) for c in children], rect.width(), rect.height())
    for child, placed in zip(
        children, squarify.squarify(sizes, rect.x(), rect.y(), rect.width(), rect.height())
    ):
        box = QRectF(placed["x"], placed["y"], placed["dx"], placed["dy"])
        if box.width() < MIN_SIDE or box.height() < MIN_SIDE:
            continue
        out.append((box, child, level))
        inner = box.adjusted(PAD, PAD + LABEL_HEIGHT, -PAD, -PAD)
        if level + 1 < MAX_DEPTH and child.children and inner.height() > 2 * MIN_SIDE:
            _layout(child, inner, size_of, level + 1, out)


def _colour(block: Block, colour_by: str, dtype_colours: dict) -> QColor:
    if colour_by == "dtype":
        return QColor(dtype_colours.get(block.main_dtype(), "#bab0ac"))
    return QColor(ROLE_COLOURS.get(block.main_role(), "#bab0ac"))


def render_map(top: Block, size_by: str, colour_by: str, size: tuple, look: tuple):
    """(image, rects) of the treemap at `size` (w, h): laid out and painted off the GUI thread
    (a QImage may be painted on any thread). `look`: (base colour, dtype colours, font)."""
    base, dtype_colours, font = look
    width, height = max(size[0], 1), max(size[1], 1)
    rects: list = []
    size_of = (lambda b: b.bytes) if size_by == "bytes" else (lambda b: b.elements)
    _layout(top, QRectF(1, 1, width - 2, height - 2), size_of, 0, rects)
    image = QImage(width, height, QImage.Format_ARGB32_Premultiplied)
    image.fill(QColor(base))
    painter = QPainter(image)
    painter.setFont(font)
    metrics = painter.fontMetrics()
    for box, block, level in rects:
        colour = _colour(block, colour_by, dtype_colours).lighter(100 + 18 * level)
        painter.fillRect(box, colour)
        painter.setPen(QPen(colour.darker(160), 1))
        painter.drawRect(box)
        label = safe_text(
            f"{block.name} \u2014 {block.parameter}" if block.parameter else block.name
        )
        text = f"{label}  {format_bytes(block.bytes)}"
        if metrics.horizontalAdvance(text) + 6 > box.width():
            text = label
        if metrics.horizontalAdvance(text) + 6 <= box.width() and box.height() >= LABEL_HEIGHT:
            painter.setPen(QColor("#101010") if colour.lightness() > 110 else QColor("white"))
            painter.drawText(
                box.adjusted(3, 1, -3, 0), Qt.AlignLeft | Qt.AlignTop | Qt.TextSingleLine, text
            )
    painter.end()
    return image, rects


class BytesMapController(workers.PaneController):
    """The bytes map of one checkpoint ("map": blocks and memory needs) and its treemap
    pictures ("render": a newer size or look supersedes the one being drawn)."""

    mapped = Signal(object, object)  # the top Block, memory_needs
    failed = Signal(str)
    rendered = Signal(object, object)  # the treemap QImage, its (box, block, text) rects

    def __init__(self, checkpoint: Checkpoint, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.checkpoint = checkpoint

    def compute(self) -> None:
        self.jobs.start(
            "map",
            _footprint,
            self.checkpoint,
            on_result=lambda result: self.mapped.emit(*result),
            on_error=self.failed.emit,
        )

    def render(self, top: Block, size_by: str, colour_by: str, size: tuple, look: tuple) -> None:
        self.jobs.start(
            "render",
            render_map,
            top,
            size_by,
            colour_by,
            size,
            look,
            on_result=lambda result: self.rendered.emit(*result),
        )


class _Canvas(QWidget):
    """Shows the treemap image that `controller` renders (again after a resize settles)."""

    hovered = Signal(object)  # Block or None
    clicked = Signal(object)  # Block
    drawn = Signal()

    def __init__(self, controller: BytesMapController, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setMinimumSize(200, 150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.top: Block | None = None
        self.size_by = "bytes"
        self.colour_by = "role"
        self.rects: list = []
        self.image: QImage | None = None
        self.dtype_colours: dict = {}
        self.controller = controller
        controller.rendered.connect(self._rendered)
        self.resize_timer = QTimer(self)
        self.resize_timer.setSingleShot(True)
        self.resize_timer.setInterval(RESIZE_SETTLE_MS)
        self.resize_timer.timeout.connect(self.relayout)

    def show_map(self, top: Block, size_by: str, colour_by: str) -> None:
        self.top, self.size_by, self.colour_by = top, size_by, colour_by
        self.dtype_colours = {
            dtype: DTYPE_PALETTE[i % len(DTYPE_PALETTE)]
            for i, dtype in enumerate(sorted(top.by_dtype, key=top.by_dtype.get, reverse=True))
        }
        self.relayout()

    def relayout(self) -> None:
        if self.top is None:
            return
        look = (self.palette().color(QPalette.Base).name(), dict(self.dtype_colours), self.font())
        self.controller.render(
            self.top, self.size_by, self.colour_by, (self.width(), self.height()), look
        )

    def _rendered(self, image: QImage, rects: list) -> None:
        self.image, self.rects = image, rects
        self.update()
        self.drawn.emit()

    def colour(self, block: Block) -> QColor:
        return _colour(block, self.colour_by, self.dtype_colours)

    def block_at(self, point: QPointF) -> Block | None:
        found = None
        for box, block, _ in self.rects:  # parents come before their children
            if box.contains(point):
                found = block
        return found

    def resizeEvent(self, event):
        self.resize_timer.start()  # the old picture, stretched, until the new one is drawn
        super().resizeEvent(event)

    def paintEvent(self, _event):
        painter = QPainter(self)
        if self.image is None:
            painter.fillRect(self.rect(), self.palette().color(QPalette.Base))
        else:
            painter.drawImage(QRectF(self.rect()), self.image)
        painter.end()

    def mouseMoveEvent(self, event):
        self.hovered.emit(self.block_at(event.position()))

    def leaveEvent(self, event):
        self.hovered.emit(None)
        super().leaveEvent(event)

    def mousePressEvent(self, event):
        block = self.block_at(event.position())
        if block is not None and event.button() == Qt.LeftButton:
            self.clicked.emit(block)


def block_text(block: Block, total: int) -> str:
    share = f" ({block.bytes / total:.1%} of the file's tensor bytes)" if total else ""
    roles = ", ".join(
        f"{ROLE_TEXT[r]} {format_bytes(block.by_role[r])}" for r in ROLES if block.by_role.get(r)
    )
    dtypes = ", ".join(f"{safe_text(d)} {format_bytes(b)}" for d, b in block.by_dtype.items())
    name = safe_text(block.path or "(all)")
    if block.class_name:
        name += f" ({safe_text(block.class_name)})"
    if block.parameter:
        name += f" \u2014 {safe_text(block.parameter)}"
    return (
        f"{name}: {format_bytes(block.bytes)}{share}, {format_count(block.elements)} elements "
        f"in {plural(block.tensors, 'tensor')}; {roles}; {dtypes}"
    )


class BytesMapView(QWidget):
    """`select(key)` is called with the key prefix of a clicked block."""

    ready = Signal(object)  # the top Block, drawn
    block_clicked = Signal(str)

    def __init__(self, checkpoint, select=None, parent=None):
        super().__init__(parent)
        self.setObjectName("bytesMap")
        self.checkpoint, self.select = checkpoint, select
        self.top: Block | None = None
        self.controller = BytesMapController(checkpoint, self)
        self.controller.mapped.connect(self._done)
        self.controller.failed.connect(self._failed)
        self.size_box = QComboBox()
        self.size_box.setObjectName("bytesMapSize")
        self.size_box.addItem("size by bytes", "bytes")
        self.size_box.addItem("size by elements", "elements")
        self.colour_box = QComboBox()
        self.colour_box.setObjectName("bytesMapColour")
        self.colour_box.addItem("colour by role", "role")
        self.colour_box.addItem("colour by dtype", "dtype")
        for box in (self.size_box, self.colour_box):
            box.setSizeAdjustPolicy(QComboBox.AdjustToContents)
            box.currentIndexChanged.connect(self._redraw)
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.RichText)
        self.hover = QLabel("Computing the bytes map...")
        self.hover.setObjectName("bytesMapHover")
        self.hover.setTextFormat(Qt.PlainText)
        self.hover.setWordWrap(True)
        self.canvas = _Canvas(self.controller)
        self.canvas.setObjectName("bytesMapCanvas")
        self.canvas.hovered.connect(self._hovered)
        self.canvas.clicked.connect(self._clicked)
        self.needs = QTextBrowser()
        self.needs.setObjectName("memoryNeeds")
        controls = QHBoxLayout()
        controls.addWidget(self.size_box)
        controls.addWidget(self.colour_box)
        controls.addWidget(self.legend, 1)
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.canvas)
        split.addWidget(self.needs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.hover)
        layout.addWidget(split, 1)
        self.controller.compute()

    def _done(self, top: Block, needs):
        self.top = top
        self.needs.setPlainText("\n".join(memory_lines(needs)).strip())
        self.hover.setText(block_text(self.top, self.top.bytes))
        top = self.top
        self.canvas.drawn.connect(lambda: self.ready.emit(top), Qt.SingleShotConnection)
        self._redraw()

    def _failed(self, message):
        self.hover.setText(f"Bytes map failed: {message}")

    def _redraw(self, *_):
        if self.top is None:
            return
        colour_by = self.colour_box.currentData()
        self.canvas.show_map(self.top, self.size_box.currentData(), colour_by)
        if colour_by == "role":
            items = [(ROLE_COLOURS[r], ROLE_TEXT[r]) for r in ROLES if self.top.by_role.get(r)]
        else:
            items = [(c, d) for d, c in self.canvas.dtype_colours.items()]
        self.legend.setText(
            "  ".join(
                f"<span style='color:{colour}'>&#9632;</span> {as_html(name)}"
                for colour, name in items
            )
        )

    def _hovered(self, block):
        if self.top is not None:
            self.hover.setText(block_text(block or self.top, self.top.bytes))

    def _clicked(self, block: Block):
        self.block_clicked.emit(block.path)
        if self.select is not None and block.path:
            self.select(block.path)


def _footprint(checkpoint: Checkpoint) -> tuple[Block, dict]:
    # paused and frozen, as a tab's load is: the GUI thread's young collection walked the tens
    # of thousands of blocks made here at once (60-80 ms)
    with paused_gc(freeze=True):
        return bytes_map(checkpoint), memory_needs(checkpoint)
