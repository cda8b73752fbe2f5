"""The tensor pane's plain views: the statistics table, the facts panel and the controls bar.
Each shows what it is given; the controller in tensor_view decides what that is."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt
from PySide6.QtGui import QColor, QPainter, QTextOption
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
    QWidget,
)

from ckpt_viewer.core.listing.model import Node, format_bytes
from ckpt_viewer.core.listing.report import stats_rows
from ckpt_viewer.core.values.stats import PARTS
from ckpt_viewer.qt.plain import as_html, shown
from ckpt_viewer.qt.theme import on_base

RANGES = {
    "full range": None,
    "clip to 0.1-99.9 %": (0.001, 0.999),
    "clip to 1-99 %": (0.01, 0.99),
    "clip to 5-95 %": (0.05, 0.95),
}


def tensor_facts(node: Node) -> list[tuple[str, str]]:
    """(label, text) of what the file says about the tensor, no values read."""
    t = node.tensor
    facts = [
        ("key", node.key),
        ("shape", str(list(t.shape))),
        ("dtype", t.dtype),
        ("elements", f"{t.numel:,}"),
        ("bytes", f"{format_bytes(t.nbytes)} ({t.nbytes:,})"),
        ("device tag", t.device),
        ("layout", t.layout),
    ]
    if t.layout == "strided" and t.storage is not None:
        facts += [
            ("strides", str(list(t.stride))),
            ("storage offset", str(t.offset)),
            ("contiguous", "yes" if t.is_contiguous else "no"),
            (
                "storage",
                f"{t.storage.key} ({t.storage.numel:,} elements"
                f"{', shared with ' + node.shared_with if node.shared_with else ''})",
            ),
        ]
    if t.quantizer:
        facts.append(
            (
                "quantizer",
                ", ".join(f"{k}={v}" for k, v in t.quantizer.items() if not hasattr(v, "shape")),
            )
        )
    if node.role:
        facts.append(("role", node.role))
    if node.note:
        facts.append(("note", node.note))
    return facts


def shown_stats_rows(stats) -> list[tuple[str, str]]:
    """The statistics table's rows: core's rows with the NaN/Inf counts moved up beside the
    element count (in a narrow strip they sat below its fold), then clipping and the most
    common values."""
    rows = stats_rows(stats)
    alarms = [row for row in rows if row[0] in StatsTable.ALARMS]
    rows = [row for row in rows if row[0] not in StatsTable.ALARMS]
    rows[1:1] = alarms
    if stats.below or stats.above:
        rows += [("below range", f"{stats.below:,}"), ("above range", f"{stats.above:,}")]
    if stats.value_counts:
        top = sorted(stats.value_counts.items(), key=lambda kv: -kv[1])[:8]
        rows += [(f"value {v}", f"{c:,}") for v, c in top]
    return rows


BREAK = "\u200b"  # zero-width space: a place a line may break, never copied
SHORT_FACT = 24  # characters a fact's text may have beside its label


def breakable(text: str) -> str:
    """Escaped text whose lines break after a key's or path's separators (h.3.mlp.|c_fc),
    not in the middle of a word."""
    return as_html(text).replace(".", "." + BREAK).replace("/", "/" + BREAK)


class ElidedLabel(QLabel):
    """A status line that never clips: too long for its width, it is elided in the middle
    ("computing exact…statistics"), and its tooltip holds the whole text."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setTextFormat(Qt.PlainText)

    def setText(self, text: str) -> None:
        text = shown(text)
        super().setText(text)
        self.setToolTip(text)

    def elided(self) -> str:
        """The text as painted: whole when it fits, else cut in the middle."""
        return self.fontMetrics().elidedText(
            self.text(), Qt.ElideMiddle, self.contentsRect().width()
        )

    def paintEvent(self, event) -> None:
        rect, text = self.contentsRect(), self.elided()
        painter = QPainter(self)
        self.style().drawItemText(
            painter,
            rect,
            int(self.alignment().value),
            self.palette(),
            self.isEnabled(),
            text,
            self.foregroundRole(),
        )


class FactsPanel(QTextEdit):
    """Facts as selectable text, one per line, wrapped to the panel's width: a long key,
    storage path or shape breaks anywhere rather than scrolling sideways."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("tensorFacts")
        self.setReadOnly(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.TextSelectableByKeyboard)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setLineWrapMode(QTextEdit.WidgetWidth)
        self.setWordWrapMode(QTextOption.WrapAtWordBoundaryOrAnywhere)
        self.setFrameShape(QFrame.NoFrame)
        self.viewport().setAutoFillBackground(False)  # the pane's background, like a label

    def show_facts(self, facts: list[tuple[str, str]]):
        # a long text (a key, a storage path) gets the panel's width under its label: beside the
        # labels, a narrow strip left it too little and "language_model." broke mid-word
        rows = "".join(
            f"<tr><td><b>{as_html(label)}</b>&nbsp;</td><td>{breakable(text)}</td></tr>"
            if len(text) <= SHORT_FACT
            else f"<tr><td colspan=2><b>{as_html(label)}</b><br>{breakable(text)}</td></tr>"
            for label, text in facts
        )
        self.setHtml(f"<table cellspacing=1>{rows}</table>")

    def toPlainText(self) -> str:
        return super().toPlainText().replace(BREAK, "")

    def createMimeDataFromSelection(self) -> QMimeData:
        data = QMimeData()
        data.setText(self.textCursor().selection().toPlainText().replace(BREAK, ""))
        return data


class StatsTable(QTableWidget):
    """Statistics in two (label, value) column pairs, numbers right-aligned. A sampled preview's
    figures are marked as estimates (≈, italic) and the figures a sample cannot give are
    pending; non-zero NaN/Inf counts and figures that are NaN or infinite are highlighted."""

    PAIR_WIDTH = 150  # pixels a (label, value) pair needs: a wide table shows more pairs
    EXACT_ONLY = {"L2 norm", "NaN", "+Inf", "-Inf", "zeros"}
    ALARMS = {"NaN", "+Inf", "-Inf"}

    def __init__(self, parent=None):
        super().__init__(0, 4, parent)
        self.setObjectName("statsTable")
        self.setHorizontalHeaderLabels(["statistic", "value"] * 2)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().lineSpacing() + 6)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Interactive)  # sized by _spread
        # the rows down to -Inf stay in sight: a pane docked below the tree took the height
        # from the histogram and this strip alike, and hid the -Inf count
        self.setMinimumHeight(
            header.sizeHint().height()
            + (1 + len(self.ALARMS)) * self.verticalHeader().defaultSectionSize()
            + 2 * self.frameWidth()
        )
        self.rows, self.preview = [], False

    def resizeEvent(self, event):
        super().resizeEvent(event)
        if self._pairs() * 2 != self.columnCount():
            self.fill(self.rows, self.preview)
        else:
            self._spread()

    def _spread(self):
        """Each column as wide as its texts (numbers are never cut), the width left over shared
        by all: a blank band beside the last pair, or one stretched column that pulled a value
        far from its label, looked broken."""
        header = self.horizontalHeader()
        widths = [
            max(self.sizeHintForColumn(c), header.sectionSizeHint(c))
            for c in range(self.columnCount())
        ]
        spare = max(0, self.viewport().width() - sum(widths))
        for column, width in enumerate(widths):
            header.resizeSection(
                column, width + spare // len(widths) + (1 if column < spare % len(widths) else 0)
            )

    def _pairs(self) -> int:
        return max(1, min(4, self.viewport().width() // self.PAIR_WIDTH))

    def fill(self, rows, preview: bool):
        """rows: (label, text) pairs; preview: the figures come from a sample."""
        self.rows, self.preview = rows, preview
        pairs = self._pairs()
        self.clearContents()
        self.setColumnCount(2 * pairs)
        self.setHorizontalHeaderLabels(["statistic", "value"] * pairs)
        self.horizontalHeaderItem(1).setToolTip(
            "quantiles are exact: the ceil(q * n)-th smallest finite value"
        )
        self.setRowCount(-(-len(rows) // pairs))
        for i, (label, text) in enumerate(rows):
            row, column = i % self.rowCount(), 2 * (i // self.rowCount())
            self.setItem(row, column, QTableWidgetItem(label))
            self.setItem(row, column + 1, self._value_item(label, text, preview))
        self._spread()

    def _value_item(self, label: str, text: str, preview: bool) -> QTableWidgetItem:
        value = QTableWidgetItem(text)
        value.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
        if preview:
            font = value.font()
            font.setItalic(True)
            value.setFont(font)
            if label in self.EXACT_ONLY or label.endswith("%"):
                value.setText("...")
                value.setToolTip("computing the exact figure")
            elif label != "elements":
                value.setText(f"≈ {text}")
                value.setToolTip("an estimate from a sample; exact figures follow")
        elif (label in self.ALARMS and text not in ("0", "-")) or text in ("nan", "inf", "-inf"):
            font = value.font()
            font.setBold(True)
            value.setFont(font)
            value.setForeground(on_base(QColor(200, 30, 40)))
            value.setBackground(QColor(255, 80, 80, 50))
        return value

    def as_dict(self) -> dict:
        """{label: shown text} (tests and copying)."""
        out = {}
        for row in range(self.rowCount()):
            for column in range(0, self.columnCount(), 2):
                label, value = self.item(row, column), self.item(row, column + 1)
                if label is not None and value is not None:
                    out[label.text()] = value.text()
        return out


class DeferredProgressBar(QProgressBar):
    """A progress bar that is painted with the rest of the window: QProgressBar.setValue
    repaints at once, and a repaint paints everything then waiting (the tree, the plot), inside
    the handler that set the value: a selection and that paint became one stall."""

    def setValue(self, value: int) -> None:
        if value == self.value():
            return
        self.setUpdatesEnabled(False)  # repaint() then returns at once
        super().setValue(value)
        self.setUpdatesEnabled(True)  # schedules an update instead


class TensorControls(QWidget):
    """The bar above the histogram: bins, log y, range, complex part, compare-with, Save PNG,
    then the job's status and progress."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.bins = QSpinBox()
        self.bins.setRange(0, 4096)
        self.bins.setSpecialValueText("bins: auto")
        self.bins.setValue(0)
        self.bins.setPrefix("bins ")
        self.bins.setToolTip("histogram bins (auto: from the element count)")
        self.bins.setKeyboardTracking(False)
        self.log_y = QCheckBox("log y")
        self.range = QComboBox()
        self.range.addItems(list(RANGES))
        self.part = QComboBox()
        self.part.addItems(list(PARTS))
        self.part.setToolTip("complex tensors: which part to describe")
        self.part.setVisible(False)
        self.compare = QComboBox()
        self.compare.setObjectName("compareWith")
        self.compare.setToolTip("overlay the histogram of the same key in another open file")
        self.compare.setVisible(False)  # shown once another open file has tensors to overlay
        self.save_png = QPushButton("Save PNG...")
        self.progress = DeferredProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(140)
        self.progress.setTextVisible(False)
        keep_space = self.progress.sizePolicy()
        keep_space.setRetainSizeWhenHidden(True)
        self.progress.setSizePolicy(keep_space)
        self.status = ElidedLabel()
        self.status.setObjectName("tensorStatus")
        self.status.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        # its text changes as work proceeds; it must not change the width the view asks for
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.bins, self.log_y, self.range, self.part, self.compare, self.save_png):
            layout.addWidget(widget)
        layout.addWidget(self.status, 1)
        layout.addWidget(self.progress)
        self.set_enabled(False)

    def set_enabled(self, on: bool):
        for widget in (self.bins, self.log_y, self.range, self.part, self.save_png):
            widget.setEnabled(on)

    def clip(self):
        """The chosen quantile pair to clip the range to, or None."""
        return RANGES[self.range.currentText()]

    def reset_range(self):
        self.range.blockSignals(True)
        self.range.setCurrentIndex(0)
        self.range.blockSignals(False)

    def fill_compare(self, choices):
        """choices: (label, tensor) of the same key in other open files."""
        self.compare.blockSignals(True)
        self.compare.clear()
        self.compare.addItem("compare with...", None)
        for label, tensor in choices:
            self.compare.addItem(label, tensor)
        self.compare.setVisible(self.compare.count() > 1)
        self.compare.blockSignals(False)
