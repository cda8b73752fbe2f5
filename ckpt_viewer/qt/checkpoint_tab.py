"""One open checkpoint: warning banner, filterable key tree, summary / tensor / optimizer panes."""

from __future__ import annotations

import gc

from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QLineEdit, QMenu,
                               QSplitter, QTabWidget, QTextBrowser, QTreeView, QVBoxLayout,
                               QWidget)

from ckpt_viewer.core.model import format_bytes, format_count
from ckpt_viewer.core.report import describe_value
from ckpt_viewer.core.summary import scalars_by_importance
from ckpt_viewer.qt.optimizer_view import OptimizerView
from ckpt_viewer.qt.tensor_view import TensorView
from ckpt_viewer.qt.tree_model import KeyTreeModel
from ckpt_viewer.qt.plain import as_html, plain_label

AUTO_EXPAND_LIMIT = 2000   # after filtering, expand everything if at most this many rows show
AUTO_OPEN_ROWS = 50        # rows (a screenful) a new tab's opened first levels may show


def summary_html(checkpoint, totals) -> str:
    esc = as_html
    rows = [("Path", esc(checkpoint.path)), ("Format", esc(checkpoint.format)),
            ("File size", f"{format_bytes(checkpoint.file_bytes)} ({checkpoint.file_bytes:,} bytes)"),
            ("Tensors", f"{totals.tensors:,}"),
            ("Model parameters", f"{format_count(totals.split['model'])} "
                                 f"({totals.split['model']:,})"),
            ("Optimizer state", f"{format_count(totals.split['optimizer_state'])} elements"),
            ("Other tensors", f"{format_count(totals.split['other'])} elements"),
            ("All elements", f"{format_count(totals.params)} ({totals.params:,}), each storage "
                             "counted once"),
            ("Tensor bytes", format_bytes(totals.bytes))]
    rows += [(esc(str(k)), esc(describe_value(v))) for k, v in checkpoint.metadata.items()]
    out = ["<h3>Summary</h3><table cellspacing=4>"]
    out += [f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows]
    out.append("</table><h3>By dtype</h3><table cellspacing=4>"
               "<tr><th align=left>dtype</th><th align=right>tensors</th>"
               "<th align=right>elements</th><th align=right>bytes</th></tr>")
    for dtype, (count, params, nbytes) in totals.by_dtype.items():
        out.append(f"<tr><td>{esc(dtype)}</td><td align=right>{count:,}</td>"
                   f"<td align=right>{params:,}</td><td align=right>{format_bytes(nbytes)}</td></tr>")
    out.append("</table>")
    if checkpoint.warnings:
        out.append("<h3>Warnings</h3><ul>")
        out += [f"<li>{esc(w)}</li>" for w in checkpoint.warnings]
        out.append("</ul>")
    scalars = checkpoint.scalars()
    if scalars:
        out.append("<h3>Scalars</h3><table cellspacing=4>")
        out += [f"<tr><td>{esc(k)}</td><td>{esc(describe_value(v))}</td></tr>"
                for k, v in scalars_by_importance(scalars)[:2000]]
        out.append("</table>")
    return "".join(out)


class CheckpointTab(QWidget):
    """Built on the GUI thread from what the load worker produced."""

    tensor_selected = Signal(str)

    def _fill_banner(self, checkpoint):
        """Red only when the file names code (with the call and where it sits); classes and
        plain-data globals are quiet information (DESIGN.md's globals triage)."""
        from ckpt_viewer.core.globals import MEANING, triage

        uses = [u for u in triage(checkpoint) if u.category != "torch"]
        code = [u for u in uses if u.category == "code"]
        if code:
            lines = ["This file names code that torch.load(weights_only=False) would run. "
                     "Nothing was run here."]
            for use in code[:6]:
                call = f"{use.name}({use.calls[0]})" if use.calls else use.name
                where = f" at {use.keys[0]}" if use.keys else ""
                lines.append(f"  {call[:200]}{where}")
            style = "background: #f8d7da; color: #58151c; border: 1px solid #f1aeb5;"
        else:
            lines = []
            for kind in ("class", "data"):
                names = [u.name for u in uses if u.category == kind]
                if names:
                    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
                    lines.append(f"{', '.join(names[:8])}{more}: {MEANING[kind]}.")
            lines.append("`ckpt-viewer globals FILE` prints the allowlist that loads it.")
            style = "background: palette(alternate-base); border: 1px solid palette(mid);"
        self.banner.setText("\n".join(lines))
        self.banner.setProperty("severity", "code" if code else "info")
        self.banner.setStyleSheet(f"QLabel#unsafeBanner {{ {style} padding: 6px; }}")

    def __init__(self, checkpoint, index, totals, parent=None):
        super().__init__(parent)
        self.checkpoint, self.totals = checkpoint, totals
        self.model = KeyTreeModel(index, self)

        self.banner = QLabel()
        self.banner.setObjectName("unsafeBanner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner.setTextFormat(Qt.PlainText)
        if checkpoint.unsafe_globals:
            self._fill_banner(checkpoint)
        self.banner.setVisible(bool(checkpoint.unsafe_globals))

        self.filter = QLineEdit()
        self.filter.setObjectName("keyFilter")
        self.filter.setPlaceholderText("Filter keys: text, glob (*.weight) or /regex/")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.apply_filter)
        self.filter_status = plain_label()
        self.ticked = plain_label()
        self.ticked.setObjectName("tickedCount")
        self.model.checks_changed.connect(
            lambda n: self.ticked.setText(f"{n:,} ticked for export (Ctrl+E)" if n else ""))

        self.tree = QTreeView()
        self.tree.setObjectName("keyTree")
        self.tree.setModel(self.model)
        self.tree.setUniformRowHeights(True)
        self.tree.header().setSortIndicator(-1, Qt.AscendingOrder)   # file order until clicked
        self.tree.setSortingEnabled(True)
        self.tree.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.tree.setContextMenuPolicy(Qt.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.header().setStretchLastSection(False)
        for column, width in enumerate((300, 130, 110, 80, 110, 80, 60)):
            self.tree.setColumnWidth(column, width)
        self.tree.selectionModel().currentChanged.connect(self._current_changed)
        self._expand_first_levels()

        self.summary = QTextBrowser()
        self.summary.setObjectName("summaryPanel")
        self.summary.setHtml(summary_html(checkpoint, totals))
        # the tensor and optimizer panes are built by build_panes(), after the tree's first
        # paint: one long GUI-thread step would stall the window
        self.tensor_view = self.optimizer_view = None
        self.panes = QTabWidget()
        self.panes.addTab(self.summary, "Summary")
        self.panes.addTab(QWidget(), "Tensor")
        self.panes.addTab(QWidget(), f"Optimizer ({len(checkpoint.optimizers)})")

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        filter_row = QHBoxLayout()
        filter_row.addWidget(self.filter, 1)
        filter_row.addWidget(self.filter_status)
        filter_row.addWidget(self.ticked)
        left_layout.addLayout(filter_row)
        left_layout.addWidget(self.tree)
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.panes)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([780, 620])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)

    def _expand_first_levels(self):
        """Open the top one or two levels if that shows at most AUTO_OPEN_ROWS rows: laying
        out hundreds of opened rows on the first paint stalled the window by 40-60 ms."""
        level, depth, revealed = self.model.top.children, -1, 0
        while depth < 1:
            level = [child for row in level for child in row.children]
            revealed += len(level)
            if not level or revealed > AUTO_OPEN_ROWS:
                break
            depth += 1
        if depth >= 0:
            self.tree.expandToDepth(depth)

    def build_panes(self):
        if self.tensor_view is not None:
            return
        self.tensor_view = TensorView(self.checkpoint)
        self.optimizer_view = OptimizerView(self.checkpoint)
        current = self.panes.currentIndex()
        for index, pane in ((1, self.tensor_view), (2, self.optimizer_view)):
            placeholder, label = self.panes.widget(index), self.panes.tabText(index)
            self.panes.removeTab(index)
            self.panes.insertTab(index, pane, label)
            placeholder.deleteLater()
        self.panes.setCurrentIndex(current)

    def cancel(self):
        """Stop the tensor view's computation, if any (closing the tab or the window)."""
        if self.tensor_view is not None:
            self.tensor_view.cancel()
            self.tensor_view.jobs.cancel()           # the overlay
            self.tensor_view.heatmap.cancel()
            self.optimizer_view.cancel()

    def release(self):
        """Closing: stop work and let what the load built be freed (see paused_gc)."""
        self.cancel()
        self.tree.setModel(None)
        self.model.release()
        gc.unfreeze()

    # --- filter ----------------------------------------------------------------------------
    def apply_filter(self, text: str):
        try:
            matches = self.model.set_filter(text)
        except ValueError as exc:
            self.filter_status.setText(str(exc))
            self.filter.setStyleSheet("QLineEdit { color: #b02a37; }")
            return
        self.filter.setStyleSheet("")
        self.filter_status.setText(f"{matches:,} match{'es' if matches != 1 else ''}"
                                   if text.strip() else "")
        if text.strip() and self.model.visible_count <= AUTO_EXPAND_LIMIT:
            self.tree.expandAll()

    def focus_filter(self):
        self.filter.setFocus()
        self.filter.selectAll()

    # --- selection -------------------------------------------------------------------------
    def selected_key(self) -> str:
        index = self.tree.currentIndex()
        return index.data(Qt.UserRole) if index.isValid() else ""

    def select_key(self, key: str) -> bool:
        index = self.model.index_of_key(key)
        if not index.isValid():
            return False
        self.tree.scrollTo(index)
        self.tree.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
        return True

    def largest_tensor_key(self) -> str:
        best = max(self.checkpoint.tensors(), key=lambda item: item[1].nbytes, default=None)
        return best[0] if best else ""

    def _current_changed(self, current, _previous):
        row = self.model.row_of(current) if current.isValid() else None
        if row is None or row.node.tensor is None:
            return
        self.panes.setCurrentWidget(self.tensor_view)
        self.tensor_view.show_tensor(row.node)
        self.tensor_selected.emit(row.node.key)

    # --- context menu ----------------------------------------------------------------------
    def _context_menu(self, position):
        index = self.tree.indexAt(position)
        if not index.isValid():
            return
        row = self.model.row_of(index)
        menu = QMenu(self)
        copy_key = QAction("Copy key path", menu)
        copy_key.triggered.connect(lambda: QGuiApplication.clipboard().setText(row.node.key))
        menu.addAction(copy_key)
        if row.node.tensor is not None:
            shape = str(list(row.node.tensor.shape))
            copy_shape = QAction("Copy shape", menu)
            copy_shape.triggered.connect(lambda: QGuiApplication.clipboard().setText(shape))
            menu.addAction(copy_shape)
        menu.addSeparator()
        expand = QAction("Expand subtree", menu)
        expand.triggered.connect(lambda: self.tree.expandRecursively(index.siblingAtColumn(0)))
        menu.addAction(expand)
        menu.exec(self.tree.viewport().mapToGlobal(position))

    def copy_selected_key(self):
        key = self.selected_key()
        if key:
            QGuiApplication.clipboard().setText(key)

