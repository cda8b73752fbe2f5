"""Moving around the key tree: Enter/Down from the filter into its results and Esc back, Expand
All that expands only what comes into view, and the go-to-key box (Ctrl+P)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal, SignalInstance
from PySide6.QtGui import QKeyEvent, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QLineEdit,
    QListWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core.listing.text import FuzzyKeys
from ckpt_viewer.qt.plain import shown
from ckpt_viewer.qt.workers import PaneController

EXPAND_PASSES = 64  # rows opened per pass push their children into view: at most this deep
ROWS_PER_TURN = 1000  # rows Expand All lays out in one turn of the event loop (then the next)
INTO_RESULTS = (Qt.Key_Down, Qt.Key_Return, Qt.Key_Enter)


class FilterKeys(QObject):
    """Down or Enter in the filter moves to the selected row if the filter matched it, else to
    the first matching row (once the tree shows the text typed); Esc in the tree goes back to
    the filter."""

    def __init__(
        self,
        line: QLineEdit,
        tree: QTreeView,
        first_match: Callable,
        matched: Callable = lambda index: True,
        pending: Callable[[], bool] = lambda: False,
        applied: SignalInstance | None = None,
    ):
        super().__init__(line)
        self.line, self.tree, self.first_match, self.matched = line, tree, first_match, matched
        # Enter typed before the filter's pause ran lands once the tree shows that filter
        self.pending, self.waiting = pending, False
        if applied is not None:
            applied.connect(self._applied)
        line.textEdited.connect(self._edited)
        line.installEventFilter(self)
        tree.installEventFilter(self)

    def _edited(self, _text: str) -> None:
        self.waiting = False  # typing goes on: stay in the field

    def _applied(self, _text: str) -> None:
        if self.waiting:
            self.waiting = False
            self.into_results()

    def into_results(self) -> None:
        index = self.tree.currentIndex()
        shown = index.isValid() and self.tree.visualRect(index).isValid()
        if not shown or not self.matched(index):  # a group shown for what it holds
            index = self.first_match()
        if index.isValid():
            self.tree.setCurrentIndex(index)
            self.tree.scrollTo(index)
        self.tree.setFocus(Qt.ShortcutFocusReason)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.ShortcutOverride and watched is self.line:
            return self._window_shortcut(event)
        if event.type() != QEvent.KeyPress:
            return False
        if watched is self.line and event.key() in INTO_RESULTS:
            if self.pending():
                self.waiting = True
            else:
                self.into_results()
            return True
        if watched is self.tree and event.key() == Qt.Key_Escape:
            self.line.setFocus(Qt.ShortcutFocusReason)
            self.line.selectAll()
            return True
        return False

    def _window_shortcut(self, event: QKeyEvent) -> bool:
        """The window's shortcuts win over the field's: on X11 a line edit takes Ctrl+E as
        "end of line", and Export Selection did nothing right after filtering."""
        pressed = QKeySequence(event.keyCombination())
        for action in self.line.window().actions():
            if action.isEnabled() and pressed in action.shortcuts():
                event.ignore()
                return True
        return False


class LazyExpander(QObject):
    """View > Expand All without walking every row (QTreeView.expandAll asks the model about
    all 50,000 keys at once): the rows in view (and a page on) are expanded, then those scrolled
    into view, until Collapse All, a collapse, or a new filter ends it. One pass of rows in view
    per turn of the event loop, and a pass that has laid out ROWS_PER_TURN rows (a 5,000-row
    group) goes on in the next: laying out a big group and its children's groups in one step
    held the window past a frame."""

    def __init__(self, tree: QTreeView):
        super().__init__(tree)
        self.tree, self.on, self.filling = tree, False, False
        self.passes = 0  # passes since the last start or scroll: at most EXPAND_PASSES
        self.next_pass = QTimer(self)
        self.next_pass.setSingleShot(True)
        self.next_pass.setInterval(0)
        self.next_pass.timeout.connect(self._pass)
        tree.verticalScrollBar().valueChanged.connect(self.fill)
        tree.collapsed.connect(self.stop)
        tree.model().modelReset.connect(self.stop)
        tree.viewport().installEventFilter(self)

    def start(self) -> None:
        self.on = True
        self.fill()

    def stop(self, *_) -> None:
        self.on = False
        self.next_pass.stop()

    def busy(self) -> bool:
        """Whether passes are still to come (the rows in view are not all open yet)."""
        return self.next_pass.isActive()

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Resize:
            self.fill()
        return False

    def fill(self, *_) -> None:
        """Expand every collapsed row in view and a page below it; again, in the next turns,
        while that brought new rows in."""
        self.passes = 0
        self._pass()

    def _pass(self) -> None:
        if not self.on or self.filling:  # expanding may move the scroll bar: no recursion
            return
        # a page past the view too: Page Down and Down move by the rows laid out, and landed
        # on a collapsed row far below that the expansion then pushed out of view
        tree, height = self.tree, 2 * self.tree.viewport().height()
        model = tree.model()
        self.filling = True
        try:
            index, opened, laid_out = tree.indexAt(QPoint(1, 1)), False, 0
            while index.isValid() and tree.visualRect(index).top() < height:
                if not tree.isExpanded(index) and model.hasChildren(index):
                    tree.expand(index)
                    opened = True
                    laid_out += model.rowCount(index)
                    if laid_out >= ROWS_PER_TURN:
                        break
                index = tree.indexBelow(index)
        finally:
            self.filling = False
        self.passes += 1
        if opened and self.passes < EXPAND_PASSES:
            self.next_pass.start()


class QuickOpenController(PaneController):
    """Searches the keys for a text, in a worker: a newer text supersedes the search running."""

    found = Signal(str, list)  # the text, the keys that match it (best first)

    def __init__(self, keys: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.keys = keys
        self.finder: FuzzyKeys | None = None

    def search(self, text: str) -> None:
        self.jobs.start("find", self._find, text, on_result=lambda r: self.found.emit(*r))

    def _find(self, text: str) -> tuple[str, list[str]]:
        if self.finder is None:  # built once, in the first search's worker
            self.finder = FuzzyKeys(self.keys)
        return text, self.finder.find(text)


class QuickOpen(QDialog):
    """Go to key (Ctrl+P): type a few characters of a key in order ("h3fc" finds
    h.3.mlp.c_fc.weight), Enter shows it in the tree. Searched in a worker: a newer text
    supersedes the search still running."""

    chosen = Signal(str)
    searched = Signal(str)  # the list shows this text's matches

    def __init__(self, keys: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("quickOpen")
        self.setWindowTitle("Go to Key")
        self.resize(640, 420)
        self.found: list[str] = []
        self.line = QLineEdit()
        self.line.setObjectName("quickOpenText")
        self.line.setPlaceholderText("Characters of a key, in order (h3fc: h.3.mlp.c_fc.weight)")
        self.results = QListWidget()
        self.results.setObjectName("quickOpenResults")
        self.results.setUniformItemSizes(True)
        self.results.itemActivated.connect(lambda _: self.accept())
        layout = QVBoxLayout(self)
        layout.addWidget(self.line)
        layout.addWidget(self.results)
        self.controller = QuickOpenController(keys, self)
        self.controller.found.connect(self._show)
        self.line.textChanged.connect(self.search)
        self.line.installEventFilter(self)

    def search(self, text: str) -> None:
        self.controller.search(text)

    def _show(self, text: str, found: list[str]) -> None:
        self.found = found
        self.results.clear()
        self.results.addItems([shown(key) for key in self.found])
        if self.found:
            self.results.setCurrentRow(0)
        self.searched.emit(text)

    def eventFilter(self, watched, event) -> bool:
        if watched is self.line and event.type() == QEvent.KeyPress:
            if event.key() in (Qt.Key_Down, Qt.Key_Up, Qt.Key_PageDown, Qt.Key_PageUp):
                self.results.keyPressEvent(event)  # the list moves, typing stays here
                return True
            if event.key() in (Qt.Key_Return, Qt.Key_Enter):
                self.accept()
                return True
        return False

    def accept(self) -> None:
        row = self.results.currentRow()
        if 0 <= row < len(self.found):
            self.chosen.emit(self.found[row])
        self.controller.cancel()
        super().accept()

    def reject(self) -> None:
        self.controller.cancel()
        super().reject()
