"""The main window: menus, drag-and-drop, one tab per checkpoint, status-bar progress + Cancel."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QPoint, QRect, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QCursor, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStyle,
    QTabBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer import __version__
from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.model import Checkpoint, format_bytes
from ckpt_viewer.core.listing.remote import is_remote
from ckpt_viewer.core.listing.report import split_text
from ckpt_viewer.core.listing.runs import is_run_folder
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.core.writing.destination import default_destination
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.checkpoint_tab import CheckpointTab, TabParts, prepare_tab
from ckpt_viewer.qt.export_dialog import ExportDialog
from ckpt_viewer.qt.pickle_imports import worst_category
from ckpt_viewer.qt.plain import shown
from ckpt_viewer.qt.tensor_view import preload_plotting
from ckpt_viewer.qt.tree_model import load_for_view
from ckpt_viewer.qt.welcome import WelcomePage

MAX_RECENT = 10
NEEDS_A_FILE = (
    "actionExport",
    "actionSanitize",
    "actionVerify",
    "actionCompare",
    "actionHealth",
    "actionLayers",
    "actionPickleImports",
)  # greyed out while no file tab is shown
PRELOAD_DELAY_MS = 50
PROGRESS_EVERY = 0.1  # seconds between two progress bar values (each one a repaint)
FRAME_GUESS = QSize(16, 48)  # a title bar and borders, until the window manager says
MIN_SIZE = QSize(640, 400)  # below this the panes are of no use
# Tools views docked beside the tree: dock objectName -> title; where they sit is remembered
PANES = {
    "healthDock": "Health",
    "layersDock": "Layers",
    "pickleImportsDock": "Pickle Imports",
    "compareDock": "Compare",  # a comparison tab moved beside the tree
}
# reopened after a restart as a button: what it runs, and the window's method that runs it
PANE_STARTS = {
    "healthDock": ("Scan every tensor for findings", "health_current"),
    "layersDock": ("Plot metrics across depth", "layers_current"),
}
PANE_SHARE = 0.3  # of the window's width the first time: at 1366 the tree keeps its Elements
# tables of findings and imports, the first time in a window narrower than WIDE_WINDOW, go
# below the tree: beside it at 1366 pixels they pushed the tree's sizes out of view and cut
# their own messages
BELOW_WHEN_NARROW = ("healthDock", "pickleImportsDock")
WIDE_WINDOW = 1600
PANE_SHARE_BELOW = 0.3  # of the window's height
# every file core/listing/open.py reads (its sniffers go by content; these are the usual names)
OPEN_FILTER = (
    "Checkpoints (*.pth *.pt *.pt2 *.ckpt *.bin *.tar *.safetensors *.gguf *.pkl "
    "*.pickle *.index.json *.npy *.npz *.onnx *.h5 *.hdf5 *.keras *.msgpack);;All files (*)"
)


PANE_MIN_WIDTH = 260  # pixels a docked Tools view can always shrink to


class Pane(QDockWidget):
    """A dock holding one Tools view of one tab; closing the dock closes (and deletes) the view,
    which stops its work, and a view that closes itself hides the dock."""

    def __init__(self, name: str, title: str, parent: QWidget):
        super().__init__(title, parent)
        self.setObjectName(name)
        self.tab: QWidget | None = None

    def hold(self, view: QWidget, tab: QWidget) -> None:
        self.drop()
        view.setAttribute(Qt.WA_DeleteOnClose)
        view.installEventFilter(self)
        # a view's controls may ask for more: docked beside others they widened the window
        # past a 1366-pixel screen; squeezed, they scroll or elide instead
        view.setMinimumWidth(min(view.minimumSizeHint().width(), PANE_MIN_WIDTH))
        self.tab = tab
        self.setWidget(view)
        self.setWindowTitle(view.windowTitle())
        self.show()
        self.raise_()

    def drop(self) -> None:
        view, self.tab = self.widget(), None
        if view is not None:
            view.removeEventFilter(self)
            if hasattr(view, "cancel"):
                view.cancel()
            view.close()
        self.hide()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Close and watched is self.widget():
            self.tab = None
            self.hide()
        return False

    def closeEvent(self, event: QCloseEvent) -> None:
        self.drop()
        super().closeEvent(event)


def _load(path: str) -> TabParts:
    """Opening a tab, in a worker: what the tree needs, the key index that selections use to
    find the same key in the other open files, and what the tab and the toolbar would
    otherwise walk the whole tree for on the GUI thread."""
    parts = prepare_tab(*load_for_view(path))
    parts.checkpoint.key_index()
    parts.worst_global = worst_category(parts.checkpoint)
    return parts


def _name(path: str) -> str:
    return os.path.basename(path.rstrip("/")) or path


class WindowController(workers.PaneController):
    """What the window computes itself, one slot each: opening a file (its path), Tools >
    Verify ("verify:<path>"), Compare ("compare:<a>:<b>") and Save Sanitized Copy
    ("sanitize:<destination>"). The labelled jobs are what the status bar lists."""

    opened = Signal(str, object)  # path, what _load built
    open_failed = Signal(str, str)  # path, message
    verify_done = Signal(str, object)  # path, VerifyResult
    verify_failed = Signal(str, str)
    compare_done = Signal(str, str, object)  # path a, path b, (DiffReport, a, b)
    compare_failed = Signal(str, str, str)
    sanitize_done = Signal(str, object)  # destination, SanitizeSummary
    sanitize_failed = Signal(str, str)
    sanitize_progressed = Signal(str, float)  # destination, fraction written
    progressed = Signal(str, float)  # slot of a labelled job, fraction done

    def labels(self) -> dict[str, str]:
        return self.jobs.labels()

    def running(self, slot: str) -> bool:
        return slot in self.jobs.running

    def open(self, path: str) -> None:
        self.jobs.start(
            path,
            _load,
            path,
            on_result=lambda result: self.opened.emit(path, result),
            on_error=lambda message: self.open_failed.emit(path, message),
            label=f"Opening {_name(path)}...",
        )

    def verify(self, path: str) -> None:
        from ckpt_viewer.core.analysis.verify import verify

        slot = f"verify:{path}"
        self.jobs.start(
            slot,
            verify,
            path,
            on_result=lambda result: self.verify_done.emit(path, result),
            on_error=lambda message: self.verify_failed.emit(path, message),
            on_progress=lambda value: self.progressed.emit(slot, value),
            label=f"Verifying {_name(path)}...",
        )

    def compare(self, path_a: str, path_b: str) -> None:
        """Open both, diff them chunk by chunk (aligning their keys)."""

        def job():
            # imported here: a first comparison's imports held the GUI thread (compare_rows
            # imports no module the window has not, so no Qt type is made on the worker)
            from ckpt_viewer.core.analysis.diff import diff
            from ckpt_viewer.core.listing.open import open_checkpoint
            from ckpt_viewer.qt.compare_rows import throttled, view_rows

            # both files' trees and the rows are a bulk: frozen at the end, the collector's
            # rule (workers.GuiThreadCollector) while it is built: a collection walking them
            # held the GIL, and so the window, for up to half a second
            with paused_gc(freeze=True):
                a, b = open_checkpoint(path_a), open_checkpoint(path_b)
                report = yield from throttled(diff(a, b, auto_align=True))
                for side in report.compared or (a, b):
                    side.key_index()  # a row's click looks its keys up: not a walk then
                rows = view_rows(report, a, b)
                return report, a, b, rows, report.status_counts()

        slot = f"compare:{path_a}:{path_b}"
        self.jobs.start(
            slot,
            job,
            on_result=lambda result: self.compare_done.emit(path_a, path_b, result),
            on_error=lambda message: self.compare_failed.emit(path_a, path_b, message),
            on_progress=lambda value: self.progressed.emit(slot, value),
            label=f"Comparing {os.path.basename(path_a)} with {os.path.basename(path_b)}...",
        )

    def sanitize(
        self, checkpoint: Checkpoint, destination: str, force: bool, cancelled: Callable[[], bool]
    ) -> workers.Job:
        from ckpt_viewer.core.writing.sanitize import sanitize

        return self.jobs.start(
            f"sanitize:{destination}",
            sanitize,
            checkpoint,
            destination,
            force,
            cancelled,
            on_result=lambda summary: self.sanitize_done.emit(destination, summary),
            on_error=lambda message: self.sanitize_failed.emit(destination, message),
            on_progress=lambda value: self.sanitize_progressed.emit(destination, value),
        )


class MainWindow(QMainWindow):
    loaded = Signal(str)
    load_failed = Signal(str, str)
    verified = Signal(str, bool, str)  # path, intact, what was found
    compared = Signal(str, str)  # a comparison tab is ready
    runs_opened = Signal(object)  # a Run tab (RunView) was added
    sanitized = Signal(str, bool, str)  # destination, written, the result message

    def __init__(self, parent=None):
        super().__init__(parent)
        workers.collect_on_gui_thread()
        self.setWindowTitle("ckpt-viewer")
        self.setAcceptDrops(True)
        self.settings = QSettings()
        self.controller = WindowController(self)
        self.export_fields: dict[str, dict] = {}  # per file: what its last export dialog held
        self.controller.opened.connect(self._loaded)
        self.controller.open_failed.connect(self._failed)
        self.controller.verify_done.connect(self._verified)
        self.controller.verify_failed.connect(self._verify_failed)
        self.controller.compare_done.connect(self._compared)
        self.controller.compare_failed.connect(self._compare_failed)
        self.controller.sanitize_done.connect(self._sanitized)
        self.controller.sanitize_failed.connect(self._sanitize_failed)
        self.controller.sanitize_progressed.connect(
            lambda destination, value: self.sanitizing[destination].setValue(int(value * 1000))
        )
        self.controller.progressed.connect(self._job_progress)
        self.verifying: dict[str, CheckpointTab] = {}  # path -> the tab Verify was asked in
        self.comparing: dict[tuple[str, str], str | None] = {}  # (a, b) -> the key to show
        self.sanitizing: dict[str, QWidget] = {}  # destination -> its progress dialog
        self.tabs = QTabWidget()
        self.tabs.setObjectName("tabs")
        self.tabs.setTabsClosable(True)
        self.tabs.setMovable(True)
        self.tabs.setDocumentMode(True)
        self.tabs.tabCloseRequested.connect(self.close_tab)
        self.tabs.tabBar().setContextMenuPolicy(Qt.CustomContextMenu)
        self.tabs.tabBar().customContextMenuRequested.connect(self._tab_menu)
        self.setCentralWidget(self.tabs)
        self.welcome = WelcomePage()
        self.welcome.open_file.connect(self.open_dialog)
        self.welcome.open_folder.connect(self.open_folder_dialog)
        self.welcome.open_url.connect(self.open_url_dialog)
        self.welcome.open_run.connect(self.open_run_dialog)
        self.welcome.open_recent.connect(self.open_recent)
        self._show_welcome_if_empty()
        self.tabs.currentChanged.connect(self._update_title)
        self.placeholders: dict[str, QWidget] = {}  # path -> its tab's place while it loads
        self._build_status_bar()
        self._build_menus()
        self._build_toolbar()
        self._build_panes()
        self.drop_hint = QLabel("Drop to open", self)
        self.drop_hint.setObjectName("dropHint")
        self.drop_hint.setAlignment(Qt.AlignCenter)
        self.drop_hint.setStyleSheet(
            "QLabel#dropHint { background: rgba(42, 110, 200, 60); "
            "border: 3px dashed palette(highlight); font-size: 20pt; }"
        )
        self.drop_hint.hide()
        QTimer.singleShot(0, self._preload_when_idle)
        self._update_title()
        self._restore_size()

    def _restore_size(self):
        """The size and place saved at the last quit, else 1280 x 800 centred; either way the
        whole frame (title bar, status bar) within the screen's available area. A window saved
        on another screen keeps as much of its size as fits and is centred (Qt's restoreGeometry
        brought a 1920 x 1080 screen's 1280 x 800 window back at 640 x 480 on 1366 x 768)."""
        available = self._available()
        size, pos = self.settings.value("window/size"), self.settings.value("window/pos")
        saved_on = self.settings.value("window/screen")
        if not isinstance(size, QSize) or not size.isValid():
            size, pos = QSize(1280, 800), None
        elif available is None or saved_on != available.size():
            pos = None
        self.resize(size)
        self._fit_to_screen(pos if isinstance(pos, QPoint) else None)
        if self.settings.value("window/maximized", False, type=bool):
            self.setWindowState(Qt.WindowMaximized)

    def _build_panes(self) -> None:
        """The docks exist from the start, hidden, so restoreState puts each where it was;
        none opens at start: what they show belongs to a file."""
        self.panes: dict[str, Pane] = {}
        for name, title in PANES.items():
            pane = self.panes[name] = Pane(name, title, self)
            self.addDockWidget(Qt.RightDockWidgetArea, pane)
        # placed: where each pane goes is known (saved, or chosen at its first opening)
        self.placed = (
            set(PANES) if self.restoreState(self.settings.value("window/panes", b"")) else set()
        )
        for pane in self.panes.values():
            pane.hide()
        value = self.settings.value("window/openPanes", [])
        self.to_reopen = [value] if isinstance(value, str) else list(value or [])

    def _reopen_panes(self, tab: CheckpointTab) -> None:
        """The panes open at the last quit come back with the first file: Pickle Imports
        filled, Health and Layers with a button, as their passes read the whole file."""
        remembered, self.to_reopen = self.to_reopen, []
        for name in remembered:
            if name == "pickleImportsDock":
                self.pickle_imports_current(tab)
            elif name in PANE_STARTS:
                text, start = PANE_STARTS[name]
                holder = QWidget()
                holder.setWindowTitle(PANES[name])
                button = QPushButton(text)
                button.setObjectName(f"{name}Start")
                button.clicked.connect(lambda _=False, s=start: self._start_pane(tab, s))
                layout = QVBoxLayout(holder)
                layout.addWidget(button, 0, Qt.AlignHCenter | Qt.AlignTop)
                self._show_pane(name, holder, tab)

    def _start_pane(self, tab: CheckpointTab, start: str) -> None:
        if self.tabs.indexOf(tab) >= 0:
            self.tabs.setCurrentWidget(tab)
            getattr(self, start)()

    def _show_pane(self, name: str, view: QWidget, tab: CheckpointTab | None) -> QWidget:
        """`view` in its dock (replacing the one there); the first time, beside the tree (or
        below it), as a tab of any other pane open there."""
        pane = self.panes[name]
        below = name in BELOW_WHEN_NARROW and self.width() < WIDE_WINDOW
        area = Qt.BottomDockWidgetArea if below else Qt.RightDockWidgetArea
        # only where it goes: Layers tabbed with Health below the tree had no height for its plot
        others = [
            p
            for p in self.panes.values()
            if p is not pane and p.isVisible() and self.dockWidgetArea(p) == area
        ]
        first = name not in self.placed
        if first and others:
            self.tabifyDockWidget(others[0], pane)
        elif first:
            self.addDockWidget(area, pane)
        if tab is not None and self.tabs.indexOf(tab) >= 0:  # the file as its tab names it
            # (a model folder's tab says gpt2_hf, its views' own titles model.safetensors)
            view.setWindowTitle(
                f"{PANES[name]} - {shown(self.tabs.tabText(self.tabs.indexOf(tab)))}"
            )
        pane.hold(view, tab)
        if first:
            self.placed.add(name)
            if not others and below:
                share = int(self.height() * PANE_SHARE_BELOW)
                QTimer.singleShot(0, pane, lambda: self.resizeDocks([pane], [share], Qt.Vertical))
            elif not others:
                share = int(self.width() * PANE_SHARE)  # once laid out: not before it
                QTimer.singleShot(0, pane, lambda: self.resizeDocks([pane], [share], Qt.Horizontal))
        return view

    def event(self, event: QEvent) -> bool:
        # the tab bar of docks tabified together is made by Qt (elided: "Hea…", "Lay…"); its
        # titles are short, so they show whole and the bar scrolls when they do not fit
        if event.type() == QEvent.ChildPolished:
            child = event.child()
            if isinstance(child, QTabBar):  # the window's own children: only docks' bars
                child.setElideMode(Qt.ElideNone)
                child.setUsesScrollButtons(True)
        return super().event(event)

    def _tab_menu(self, position: QPoint) -> None:
        """A comparison tab's context menu offers to show it beside the tree."""
        index = self.tabs.tabBar().tabAt(position)
        view = self.tabs.widget(index)
        if view is None or view.objectName() != "compareView":
            return
        menu = QMenu(self)
        menu.addAction("Show Beside the Tree", lambda: self.dock_comparison(view))
        menu.popup(self.tabs.tabBar().mapToGlobal(position))

    def dock_comparison(self, view: QWidget) -> QWidget:
        """Moves a comparison tab into the Compare pane, beside the tree."""
        index = self.tabs.indexOf(view)
        if index >= 0:
            view.setWindowTitle(f"Compare - {self.tabs.tabText(index)}")
            self.tabs.removeTab(index)
            self._show_welcome_if_empty()
        return self._show_pane("compareDock", view, None)  # it holds its own files

    def _available(self) -> QRect | None:
        screen = self.screen() or QApplication.primaryScreen()
        return screen.availableGeometry() if screen is not None else None

    def _frame_margins(self) -> QSize:
        """Title bar and borders: as the window manager reports them once shown, at least a
        usual title bar's before (the frame is not known until then)."""
        known = self.frameGeometry().size() - self.geometry().size()
        return QSize(
            max(known.width(), FRAME_GUESS.width()), max(known.height(), FRAME_GUESS.height())
        )

    def _fit_to_screen(self, pos: QPoint | None = None):
        """Shrink the window until its frame fits the available area, then place it at `pos`
        (the frame's top left) moved inside that area, or centred."""
        available = self._available()
        if available is None:
            return
        frame = self._frame_margins()
        width = max(min(self.width(), available.width() - frame.width()), MIN_SIZE.width())
        height = max(min(self.height(), available.height() - frame.height()), MIN_SIZE.height())
        self.resize(width, height)
        outer = QSize(width, height) + frame
        if pos is None:
            pos = available.center() - QPoint(outer.width() // 2, outer.height() // 2)
        x = min(max(pos.x(), available.left()), available.right() + 1 - outer.width())
        y = min(max(pos.y(), available.top()), available.bottom() + 1 - outer.height())
        self.move(max(x, available.left()), max(y, available.top()))

    def showEvent(self, event):
        super().showEvent(event)
        if not getattr(self, "_fitted", False):  # the frame's size may be known from now on
            self._fitted = True
            if not self.isMaximized():
                self._fit_to_screen(self.frameGeometry().topLeft())

    def _save_size(self):
        maximized = self.isMaximized()
        available = self._available()
        self.settings.setValue(
            "window/size", (self.normalGeometry() if maximized else self.geometry()).size()
        )
        if not maximized:
            self.settings.setValue("window/pos", self.frameGeometry().topLeft())
        self.settings.setValue("window/maximized", maximized)
        self.settings.setValue("window/panes", self.saveState())
        self.settings.setValue(
            "window/openPanes", [n for n, p in self.panes.items() if p.tab is not None]
        )
        if available is not None:
            self.settings.setValue("window/screen", available.size())

    def _build_toolbar(self):
        """The everyday actions, one click away (Pickle Imports when that view exists)."""
        style = self.style()
        self.toolbar = self.addToolBar("Main")
        self.toolbar.setObjectName("mainToolbar")
        self.toolbar.setMovable(False)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        icons = {
            "actionOpen": QStyle.SP_DialogOpenButton,
            "actionExport": QStyle.SP_DialogSaveButton,
            "actionCompare": QStyle.SP_FileDialogContentsView,
            "actionVerify": QStyle.SP_DialogApplyButton,
            "actionPickleImports": QStyle.SP_DialogApplyButton,  # then the file's worst
        }
        for name, icon in icons.items():
            action = self.findChild(QAction, name)
            if action is None:
                continue
            if action.icon().isNull():
                action.setIcon(style.standardIcon(icon))
            self.toolbar.addAction(action)

    def _update_title(self, *_):
        """The window names the current file (and its folder, for the task bar's tooltip)."""
        tab = self.current_tab()
        # the last opened file's line named it over another file's tab (several opened at once)
        path, line = getattr(self, "load_line", ("", ""))
        if self.statusBar().currentMessage() == line and (
            tab is None or tab.checkpoint.path != path
        ):
            self.statusBar().clearMessage()
        for name in NEEDS_A_FILE:
            action = self.findChild(QAction, name)
            if action is not None:
                action.setEnabled(tab is not None)
        if tab is None:
            self.setWindowFilePath("")
            other = self.tabs.currentIndex()  # a Compare or Run tab names what it shows
            label = (
                self.tabs.tabText(other)
                if other >= 0 and self.tabs.currentWidget() is not self.welcome
                else ""
            )
            self.setWindowTitle(f"{shown(label)} - ckpt-viewer" if label else "ckpt-viewer")
            return
        self._show_worst_global(tab)
        self.setWindowFilePath(tab.checkpoint.path)
        opened = getattr(tab, "opened_path", "") or tab.checkpoint.path  # as its tab names it
        name = os.path.basename(opened.rstrip("/")) or opened
        self.setWindowTitle(f"{shown(name)} - ckpt-viewer")

    def _show_worst_global(self, tab) -> None:
        """Pickle Imports' icon and tooltip: the current file's worst global category."""
        from ckpt_viewer.qt.pickle_imports import CATEGORY_ICONS, CATEGORY_WORDS, worst_category

        action = self.findChild(QAction, "actionPickleImports")
        if action is None:
            return
        worst = getattr(tab, "worst_global", None)
        if worst is None:  # once per tab: triage walks the tree
            worst = tab.worst_global = worst_category(tab.checkpoint)
        action.setIcon(self.style().standardIcon(CATEGORY_ICONS[worst]))
        action.setToolTip(f"Pickle Imports: this file {CATEGORY_WORDS[worst]}")

    def _tab_of_path(self, path):
        for index in range(self.tabs.count()):
            widget = self.tabs.widget(index)
            if isinstance(widget, CheckpointTab) and getattr(widget, "opened_path", "") == path:
                return widget
        return None

    def _hold_place(self, path):
        """A tab in the order files were opened, filled when its load ends."""
        placeholder = QLabel(f"Opening {shown(path)}...")
        placeholder.setTextFormat(Qt.PlainText)
        placeholder.setAlignment(Qt.AlignCenter)
        self._hide_welcome()
        index = self.tabs.addTab(placeholder, os.path.basename(path.rstrip("/")) or path)
        self.tabs.setTabToolTip(index, path)
        self.placeholders[path] = placeholder

    def _drop_place(self, path) -> int:
        """Remove path's placeholder tab; returns where it was (-1: none)."""
        placeholder = self.placeholders.pop(path, None)
        index = self.tabs.indexOf(placeholder) if placeholder is not None else -1
        if index >= 0:
            self.tabs.removeTab(index)
            placeholder.deleteLater()
        self._show_welcome_if_empty()
        return index

    def _hide_welcome(self):
        if self.tabs.indexOf(self.welcome) >= 0:
            self.tabs.removeTab(self.tabs.indexOf(self.welcome))

    def _show_welcome_if_empty(self):
        if self.tabs.count() == 0:
            index = self.tabs.addTab(self.welcome, "Welcome")
            for side in (QTabBar.LeftSide, QTabBar.RightSide):  # the empty state stays
                self.tabs.tabBar().setTabButton(index, side, None)
            self.statusBar().clearMessage()  # "PATH: 32 tensors..." of a file no longer open

    def _preload_when_idle(self):
        """Import pyqtgraph in the background, but not while a file loads (both want the GIL)."""
        if not self.controller.labels():
            preload_plotting()

    # --- chrome ----------------------------------------------------------------------------
    def _build_status_bar(self):
        self.activity = QLabel()  # what runs now, beside (not under) the bar
        self.activity.setObjectName("activity")
        self.activity.setTextFormat(Qt.PlainText)
        self.progress = QProgressBar()
        self.progress_shown = 0.0  # when _job_progress last set its value
        self.progress.setObjectName("activityProgress")
        self.progress.setRange(0, 0)  # busy: listing has no meaningful fraction
        self.progress.setMaximumWidth(160)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.cancel_loading)
        # a message wider than the bar is cut at its end: the whole of it on hover
        bar = self.statusBar()
        bar.messageChanged.connect(lambda text: bar.setToolTip(text))  # a Python slot: PySide
        # warns on stderr when a signal is tied straight to another object's C++ setter
        self.statusBar().addPermanentWidget(self.activity)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)
        self._update_busy()

    def _action(self, text, name, shortcut=None, slot=None):
        action = QAction(text, self)
        action.setObjectName(name)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if slot is not None:
            action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_menus(self):
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(
            self._action("&Open...", "actionOpen", QKeySequence.Open, self.open_dialog)
        )
        file_menu.addAction(
            self._action("Open &Folder...", "actionOpenFolder", None, self.open_folder_dialog)
        )
        file_menu.addAction(
            self._action("Open &URL...", "actionOpenUrl", "Ctrl+Shift+O", self.open_url_dialog)
        )
        file_menu.addAction(
            self._action("Open R&un...", "actionOpenRun", None, self.open_run_dialog)
        )
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self._refresh_recent()
        file_menu.addSeparator()
        self.export_action = self._action(
            "&Export Selection...", "actionExport", "Ctrl+E", self.export_dialog
        )
        file_menu.addAction(self.export_action)
        file_menu.addAction(
            self._action(
                "Save &Sanitized Copy...", "actionSanitize", None, lambda: self.sanitize_current()
            )
        )
        file_menu.addSeparator()
        file_menu.addAction(
            self._action(
                "&Close Tab",
                "actionCloseTab",
                QKeySequence.Close,
                lambda: self.close_tab(self.tabs.currentIndex()),
            )
        )
        file_menu.addAction(self._action("&Quit", "actionQuit", QKeySequence.Quit, self.close))
        edit_menu = bar.addMenu("&Edit")
        edit_menu.addAction(
            self._action("&Find Key", "actionFind", QKeySequence.Find, self._focus_filter)
        )
        edit_menu.addAction(
            self._action("&Copy Key Path", "actionCopyKey", "Ctrl+Shift+C", self._copy_key)
        )
        tools_menu = bar.addMenu("&Tools")
        tools_menu.addAction(
            self._action("&Verify Integrity", "actionVerify", None, self.verify_current)
        )
        tools_menu.addAction(
            self._action("&Compare With...", "actionCompare", "Ctrl+D", self.compare_dialog)
        )
        tools_menu.addAction(self._action("&Health", "actionHealth", None, self.health_current))
        tools_menu.addAction(self._action("&Layers", "actionLayers", None, self.layers_current))
        tools_menu.addAction(
            self._action(
                "&Pickle Imports",
                "actionPickleImports",
                None,
                lambda: self.pickle_imports_current(),
            )
        )
        view_menu = bar.addMenu("&View")
        self.dark_action = self._action("&Dark Theme", "actionDarkTheme", None, self._toggle_theme)
        self.dark_action.setCheckable(True)
        self.dark_action.setChecked(self.settings.value("dark", False, type=bool))
        view_menu.addAction(self.dark_action)
        view_menu.addAction(
            self._action(
                "&Expand All",
                "actionExpandAll",
                None,
                lambda: self._on_tab(lambda t: t.expander.start()),
            )
        )
        view_menu.addAction(
            self._action(
                "C&ollapse All",
                "actionCollapseAll",
                None,
                lambda: self._on_tab(lambda t: t.tree.collapseAll()),
            )
        )
        self.file_order_action = self._action(
            "&File Order", "actionFileOrder", None, self._set_file_order
        )
        self.file_order_action.setCheckable(True)
        self.file_order_action.setToolTip(
            "Keys in the order the file stores them (off: natural order where the file sorted "
            "them as text, h.2 before h.10)"
        )
        view_menu.addAction(self.file_order_action)
        view_menu.addAction(
            self._action("&Go to Key...", "actionGoToKey", "Ctrl+P", self.go_to_key)
        )
        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self._action("&About ckpt-viewer", "actionAbout", None, self.about))

    # --- opening ---------------------------------------------------------------------------
    def open_paths(self, paths):
        """Open each path in its own tab, asynchronously; `loaded`/`load_failed` report. A
        folder of checkpoints (a training run) opens as one Run tab."""
        for path in paths:
            path = os.fspath(path)
            path = path.strip() if is_remote(path.strip()) else os.path.abspath(path)
            if not is_remote(path) and is_run_folder(path):
                self.open_run([path])
                continue
            if path in self.placeholders:  # loading, or loaded and not yet in its tab
                continue
            open_tab = self._tab_of_path(path)
            if open_tab is not None:  # already open: show it, no duplicate
                self.tabs.setCurrentWidget(open_tab)
                self.statusBar().showMessage(f"{path} is already open", 4000)
                continue
            self._hold_place(path)
            self.controller.open(path)
        self._update_busy()

    def _loaded(self, path: str, parts: TabParts) -> None:
        """Opening ends in steps, each its own turn of the event loop (one long step stalled
        the window): the tab built; placed and shown; its panes; `loaded`; its plot."""
        tab = CheckpointTab(parts)
        tab.worst_global = parts.worst_global
        tab.pickle_imports_requested.connect(lambda t=tab: self.pickle_imports_current(t))
        tab.opened_path = path
        if self.file_order_action.isChecked():
            tab.model.set_file_order(True)
        QTimer.singleShot(1, tab, lambda: self._place_tab(path, tab))

    def _place_tab(self, path: str, tab: CheckpointTab) -> None:
        self._hide_welcome()
        place = self.tabs.indexOf(self.placeholders.get(path))
        index = self.tabs.insertTab(
            place if place >= 0 else self.tabs.count(),
            tab,
            os.path.basename(path.rstrip("/")) or path,
        )
        self._drop_place(path)
        index = self.tabs.indexOf(tab)
        self.tabs.setTabToolTip(index, path)
        self.tabs.setCurrentIndex(index)
        self._update_title()
        # the rest after the tree has painted (a timer, so the event loop runs in between)
        QTimer.singleShot(1, tab, lambda: self._finish_tab(path, tab))

    def _finish_tab(self, path, tab):
        tab.build_panes()
        tab.tensor_view.peers = lambda: self._peers_of(tab)
        QTimer.singleShot(1, tab, lambda: self._tab_ready(path, tab))

    def _tab_ready(self, path, tab):
        totals = tab.totals
        self._remember(path)
        self._update_busy()
        self.load_line = (path, f"{path}: {plural(totals.tensors, 'tensor')}, {split_text(totals)}")
        self.statusBar().showMessage(self.load_line[1], 8000)
        self.loaded.emit(path)
        self._reopen_panes(tab)
        # a no-op until pyqtgraph has been imported; after `loaded`: the tree comes first
        QTimer.singleShot(1, tab, lambda: tab.tensor_view.prepare_plot(in_slices=True))

    def _failed(self, path, message):
        self._drop_place(path)
        self._update_busy()
        self.statusBar().showMessage(f"Could not open {os.path.basename(path)}", 8000)
        self._message(
            "errorDialog", "Cannot open checkpoint", f"{path}\n\n{shown(message)}", ok=False
        )
        self.load_failed.emit(path, message)

    def cancel_loading(self):
        """Status-bar Cancel: every open, compare and verify still running is asked to stop."""
        for slot in list(self.controller.labels()):
            self.controller.cancel(slot)
            if slot.startswith("verify:"):
                self.verified.emit(slot[len("verify:") :], False, "cancelled")
            else:
                self._drop_place(slot)
                self.load_failed.emit(slot, "cancelled")
        self.statusBar().showMessage("Cancelled", 4000)
        self._update_busy()

    def _update_busy(self):
        texts = list(self.controller.labels().values())
        busy = bool(texts)
        if not busy:  # a moment later: a new tab's first paints must not share the GIL with it
            QTimer.singleShot(PRELOAD_DELAY_MS, self._preload_when_idle)
            self.progress.setRange(0, 0)
        self.activity.setText(
            texts[-1]
            if len(texts) == 1
            else f"{texts[-1]} (and {len(texts) - 1} more)"
            if texts
            else ""
        )
        self.activity.setVisible(busy)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)

    def _job_progress(self, slot, fraction):
        """A job with a measurable fraction (verify, compare) fills the bar while it is alone."""
        if list(self.controller.labels()) == [slot]:
            now = time.monotonic()
            if now - self.progress_shown < PROGRESS_EVERY and self.progress.maximum():
                return
            self.progress_shown = now
            # QProgressBar.setValue repaints at once, and with it all the window had waiting
            # to paint (17 ms of GUI thread in a comparison): painted with the rest instead
            self.progress.setUpdatesEnabled(False)
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
            self.progress.setUpdatesEnabled(True)  # and an update() queued

    def open_dialog(self):
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open checkpoints", self.settings.value("lastDir", ""), OPEN_FILTER
        )
        if paths:
            self.settings.setValue("lastDir", os.path.dirname(paths[0]))
            self.open_paths(paths)

    def open_folder_dialog(self):
        path = QFileDialog.getExistingDirectory(
            self, "Open model folder", self.settings.value("lastDir", "")
        )
        if path:
            self.open_paths([path])

    def open_run_dialog(self):
        path = QFileDialog.getExistingDirectory(
            self,
            "Open a folder of checkpoints (a training run)",
            self.settings.value("lastDir", ""),
        )
        if path:
            self.open_run([path])

    def open_run(self, paths):
        """A Run tab: the timeline of these checkpoints (a folder of them, or several paths)."""
        from ckpt_viewer.qt.run_view import RunView

        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        view = RunView(paths, self.show_key_in, self.compare_paths, parent=self)
        name = os.path.basename(paths[0].rstrip("/")) if len(paths) == 1 else "run"
        self._hide_welcome()
        index = self.tabs.addTab(view, f"Run: {name}")
        self.tabs.setTabToolTip(index, "\n".join(paths))
        self.tabs.setCurrentIndex(index)
        if len(paths) == 1:
            self._remember(paths[0], run=True)
        self.runs_opened.emit(view)
        return view

    def show_key_in(self, path: str, key: str):
        """Show `key` of the checkpoint at `path`: in its tab, opening it first if needed."""
        tab = self._tab_of_path(path)
        if tab is not None and hasattr(tab, "select_key"):
            self.tabs.setCurrentWidget(tab)
            tab.select_key(key)
            return

        def select(loaded_path):
            if loaded_path == path:
                self.loaded.disconnect(select)
                opened = self._tab_of_path(path)
                if opened is not None:
                    opened.select_key(key)

        self.loaded.connect(select)
        self.open_paths([path])

    def open_url_dialog(self):
        """File > Open URL: s3://, gs://, hf://, https://... read by byte ranges (the load
        shows progress and can be cancelled like any other)."""
        from PySide6.QtWidgets import QInputDialog

        dialog = QInputDialog(self)
        dialog.setObjectName("openUrlDialog")
        dialog.setWindowTitle("Open URL")
        dialog.setLabelText(
            "Checkpoint URL (s3://, gs://, hf://, https://, any fsspec "
            "protocol);\ncredentials come from your environment:"
        )
        dialog.resize(560, dialog.sizeHint().height())
        dialog.textValueSelected.connect(
            lambda url: self.open_paths([url.strip()]) if url.strip() else None
        )
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def export_dialog(self):
        """File > Export selection: the ticked tensors of the current tab (or all of them)."""
        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        dialog = ExportDialog(tab.checkpoint, tab.model.checked_keys(), self)
        opened = getattr(tab, "opened_path", "") or tab.checkpoint.path  # beside the folder
        dialog.destination.setText(default_destination(opened, tab.checkpoint))
        path = tab.checkpoint.path
        dialog.restore(self.export_fields.get(path, {}))  # what was typed for this file
        dialog.finished.connect(lambda _: self.export_fields.__setitem__(path, dialog.fields()))
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def verify_current(self):
        """Tools > Verify: read every byte of the current tab's file, with progress."""
        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return
        path = tab.checkpoint.path
        if self.controller.running(f"verify:{path}"):
            return
        self.statusBar().clearMessage()
        self.verifying[path] = tab
        self.controller.verify(path)
        self._update_busy()

    def _verified(self, path: str, result) -> None:
        tab = self.verifying.pop(path, None)
        self._update_busy()
        name = _name(path)
        if result.ok:  # a status-bar line: a success needs no click to dismiss
            line = (
                f"{shown(name)} is intact: {plural(result.records, 'record')}, "
                f"{format_bytes(result.bytes)} checked"
                + "".join(f"; {shown(note)}" for note in result.notes)
                + (f"; separately: {shown(result.loader_note)}" if result.loader_note else "")
            )
            self.statusBar().showMessage(line)
            self.verified.emit(path, True, "intact")
            return
        if result.tensor:
            text = (
                f"Tensor {result.tensor} is damaged in {path}.\n\nDetails: {shown(result.problem)}"
            )
        else:
            text = f"{path} is damaged:\n\n{shown(result.problem)}"
        # kept, naming the tensor: Show Tensor draws its corrupt values as if they were sound
        self.statusBar().showMessage(
            f"{shown(name)}: damaged"
            + (f": tensor {shown(result.tensor)} fails its check" if result.tensor else "")
        )
        box = self._message("verifyResult", "Verify", text, False)
        if result.tensor and tab is not None and self.tabs.indexOf(tab) >= 0:
            show = box.addButton("Show Tensor", QMessageBox.ActionRole)
            show.setObjectName("showDamagedTensor")
            show.clicked.connect(lambda: self._opener(tab)(result.tensor))
        self.verified.emit(path, result.ok, result.problem or "intact")

    def _verify_failed(self, path: str, message: str) -> None:
        self.verifying.pop(path, None)
        self._update_busy()
        self._message("verifyResult", "Verify", f"{path}: {shown(message)}", False)
        self.verified.emit(path, False, message)

    def compare_dialog(self):
        """Tools > Compare with: the current tab's file against another one; with other files
        open, a menu offers them first (the file dialog made users find an open file again)."""
        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return
        peers = self._peers_of(tab)
        if not peers:
            self._compare_with_file(tab)
            return
        menu = QMenu(self)
        menu.setObjectName("compareMenu")
        menu.setAttribute(Qt.WA_DeleteOnClose)
        for name, checkpoint in peers:
            menu.addAction(
                shown(name), lambda p=checkpoint.path: self.compare_paths(tab.checkpoint.path, p)
            )
        menu.addSeparator()
        menu.addAction("Other File...", lambda: self._compare_with_file(tab))
        button = self.toolbar.widgetForAction(self.findChild(QAction, "actionCompare"))
        under = button.rect().bottomLeft() if button is not None and button.isVisible() else None
        menu.popup(button.mapToGlobal(under) if under is not None else QCursor.pos())
        menu.setActiveAction(menu.actions()[0])  # Ctrl+D, Enter: the first open file

    def _compare_with_file(self, tab: CheckpointTab) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Compare with", os.path.dirname(tab.checkpoint.path), OPEN_FILTER
        )
        if path:
            self.compare_paths(tab.checkpoint.path, path)

    def compare_paths(self, path_a: str, path_b: str, tensor_key: str | None = None):
        """Open both (in a worker), diff them chunk by chunk, show a comparison tab (with
        `tensor_key`'s row current when given)."""
        self.comparing[(path_a, path_b)] = tensor_key
        self.controller.compare(path_a, path_b)
        self._update_busy()

    def _compared(self, path_a: str, path_b: str, result) -> None:
        from ckpt_viewer.qt.compare_view import CompareView
        from ckpt_viewer.qt.plotting import _plotting, plotting_or_wait

        tensor_key = self.comparing.pop((path_a, path_b), None)
        self._update_busy()
        report, a, b, rows, counts = result  # pyqtgraph: preloaded a moment later (_update_busy)
        # built a few widgets per event-loop turn, hidden until the tab takes it
        view = CompareView(
            report,
            a,
            b,
            lambda: _plotting["module"],
            plotting_or_wait,
            parent=self,
            rows=rows,
            counts=counts,
            in_steps=True,
        )

        def show():
            name = f"{_name(path_a)} vs {_name(path_b)}"
            self._hide_welcome()
            self.tabs.setCurrentIndex(self.tabs.addTab(view, name))
            if tensor_key is not None:
                view.select_key(tensor_key)
            self.statusBar().showMessage("identical" if view.identical else "different", 8000)
            self.compared.emit(path_a, path_b)

        # shown in a later event than its last piece: both in one stalled the window
        view.built.connect(lambda: QTimer.singleShot(0, view, show), Qt.SingleShotConnection)

    def _compare_failed(self, path_a: str, path_b: str, message: str) -> None:
        self.comparing.pop((path_a, path_b), None)
        self._update_busy()
        self._message("errorDialog", "Cannot compare", shown(message), ok=False)
        self.load_failed.emit(path_b, message)

    def _opener(self, tab):
        """Shows `key` in `tab` (a Health finding or a Layers point clicked)."""

        def open_key(key):
            if self.tabs.indexOf(tab) >= 0:
                self.tabs.setCurrentWidget(tab)
                tab.select_key(key)

        return open_key

    def health_current(self):
        """Tools > Health: scan every tensor of the current tab's file for findings."""
        from ckpt_viewer.qt.health_view import HealthDialog

        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        return self._show_pane("healthDock", HealthDialog(tab.checkpoint, self._opener(tab)), tab)

    def layers_current(self):
        """Tools > Layers: metrics across depth of the current tab's repeated blocks."""
        from ckpt_viewer.qt.layers_view import LayersDialog

        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        view = LayersDialog(tab.checkpoint, self._opener(tab), self._peers_of(tab))
        return self._show_pane("layersDock", view, tab)

    def _set_file_order(self, on: bool) -> None:
        for index in range(self.tabs.count()):
            tab = self.tabs.widget(index)
            if isinstance(tab, CheckpointTab):
                tab.tree.header().setSortIndicator(-1, Qt.AscendingOrder)
                tab.model.set_file_order(on)

    def go_to_key(self):
        """View > Go to Key (Ctrl+P): fuzzy-find a key of the current tab and show it."""
        from ckpt_viewer.qt.navigation import QuickOpen

        tab = self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        box = QuickOpen(tab.model.keys[1:], self)  # [0] is the root's empty key
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.chosen.connect(self._opener(tab))
        box.show()
        return box

    def pickle_imports_current(self, tab=None):
        """Tools > Pickle Imports (and the banner's button): the globals view of a tab."""
        from ckpt_viewer.qt.pickle_imports import PickleImportsView

        tab = tab or self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        view = PickleImportsView(tab.checkpoint)
        view.key_activated.connect(self._opener(tab))
        view.sanitize_requested.connect(lambda: self.sanitize_current(tab=tab))
        return self._show_pane("pickleImportsDock", view, tab)

    def sanitize_current(self, destination: str | None = None, tab=None):
        """File > Save Sanitized Copy: a copy torch.load(weights_only=True) loads with no
        allowlist, written in a worker with progress and Cancel; `sanitized` reports."""
        import threading

        from PySide6.QtWidgets import QProgressDialog

        tab = tab or self.current_tab()
        if tab is None:
            self.statusBar().showMessage("Open a checkpoint first", 4000)
            return None
        source = tab.checkpoint.path
        if destination is None:
            stem = os.path.splitext(source.rstrip("/"))[0]
            destination, _ = QFileDialog.getSaveFileName(
                self, "Save sanitized copy", stem + ".sanitized.pt", "PyTorch (*.pt *.pth)"
            )
            if not destination:
                return None
        force = os.path.exists(destination)  # the save dialog has asked before replacing
        cancel = threading.Event()
        progress = QProgressDialog(
            f"Writing {os.path.basename(destination)}...", "Cancel", 0, 1000, self
        )
        progress.setObjectName("sanitizeProgress")
        progress.setWindowTitle("Save Sanitized Copy")
        progress.setMinimumDuration(0)
        progress.setAutoClose(False)
        progress.setAutoReset(False)
        progress.canceled.connect(cancel.set)
        progress.show()

        self.sanitizing[destination] = progress
        self.statusBar().showMessage(f"Sanitizing {os.path.basename(source)}...", 4000)
        return self.controller.sanitize(tab.checkpoint, destination, force, cancel.is_set)

    def _sanitized(self, destination: str, summary) -> None:
        self.sanitizing.pop(destination).close()
        changes = summary.changes
        listed = "\n".join(shown(line) for line in changes[:40])
        more = f"\n... and {len(changes) - 40} more" if len(changes) > 40 else ""
        text = (
            f"Wrote {summary.path}: {plural(summary.tensors, 'tensor')}, "
            f"{plural(len(changes), 'change')}. torch.load(weights_only=True) loads it "
            "with no allowlist." + (f"\n\n{listed}{more}" if changes else "")
        )
        self._message("sanitizeResult", "Save Sanitized Copy", text, True)
        self.sanitized.emit(summary.path, True, text)

    def _sanitize_failed(self, destination: str, message: str) -> None:
        self.sanitizing.pop(destination).close()
        self._message("sanitizeResult", "Save Sanitized Copy", shown(message), False)
        self.sanitized.emit(destination, False, message)

    def _message(self, name, title, text, ok=True):
        box = QMessageBox(
            QMessageBox.Information if ok else QMessageBox.Warning,
            title,
            text,
            QMessageBox.Ok,
            self,
        )
        box.setTextFormat(Qt.PlainText)  # messages quote keys and names from the file
        box.setObjectName(name)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.open()  # window-modal, never blocks the event loop
        return box

    def close_tab(self, index):
        widget = self.tabs.widget(index)
        if widget is None:
            return
        if widget is self.welcome:  # the empty state: it leaves when a file opens
            return
        if isinstance(widget, CheckpointTab):
            for pane in self.panes.values():
                if pane.tab is widget:
                    pane.drop()
            widget.release()
        elif hasattr(widget, "cancel"):
            widget.cancel()  # a comparison's histogram jobs
            gc.unfreeze()  # what its job froze: cycles among it are collected again
        self.tabs.removeTab(index)
        widget.deleteLater()
        self._show_welcome_if_empty()

    def _peers_of(self, tab) -> list:
        """The other open checkpoints, for histogram overlays."""
        peers = []
        for index in range(self.tabs.count()):
            other = self.tabs.widget(index)
            if isinstance(other, CheckpointTab) and other is not tab:
                peers.append((self.tabs.tabText(index), other.checkpoint))
        return peers

    def current_tab(self) -> CheckpointTab | None:
        widget = self.tabs.currentWidget()
        return widget if isinstance(widget, CheckpointTab) else None

    def _on_tab(self, func):
        tab = self.current_tab()
        if tab is not None:
            func(tab)

    def _focus_filter(self):
        self._on_tab(lambda t: t.focus_filter())

    def _copy_key(self):
        self._on_tab(lambda t: t.copy_selected_key())

    # --- recent files, theme, about --------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def recent_runs(self) -> list[str]:
        """The recent entries opened as a Run tab (File > Open Run): they reopen as one."""
        value = self.settings.value("recentRuns", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _remember(self, path: str, run: bool = False) -> None:
        recent = ([path] + [p for p in self.recent_files() if p != path])[:MAX_RECENT]
        runs = [p for p in self.recent_runs() if p != path and p in recent]
        self.settings.setValue("recent", recent)
        self.settings.setValue("recentRuns", [path] + runs if run else runs)
        self._refresh_recent()

    def open_recent(self, path: str) -> None:
        if path in self.recent_runs():
            self.open_run([path])
        else:
            self.open_paths([path])

    def _refresh_recent(self) -> None:
        runs = set(self.recent_runs())
        self.welcome.set_recent(self.recent_files(), runs)
        self.recent_menu.clear()
        for path in self.recent_files():
            action = self.recent_menu.addAction(shown(path) + (" (run)" if path in runs else ""))
            action.triggered.connect(lambda _=False, p=path: self.open_recent(p))
        self.recent_menu.setEnabled(bool(self.recent_files()))

    def _toggle_theme(self, dark):
        from ckpt_viewer.qt.theme import apply_theme

        self.settings.setValue("dark", dark)
        apply_theme(QApplication.instance(), dark)

    def about(self):
        import platform

        from PySide6 import __version__ as pyside_version

        QMessageBox.about(
            self,
            "About ckpt-viewer",
            f"<b>ckpt-viewer {__version__}</b><br>Look inside PyTorch checkpoints "
            "without running code from them.<br><br>"
            f"Python {platform.python_version()}<br>PySide6 {pyside_version}<br>"
            f"Qt {__import__('PySide6.QtCore').QtCore.qVersion()}",
        )

    # --- drag and drop ---------------------------------------------------------------------
    @staticmethod
    def _accept_as_copy(event) -> bool:
        """Take a drop as a copy (or a link), never as a move: a file manager deletes the
        source of a move once the drop is accepted."""
        for action in (Qt.CopyAction, Qt.LinkAction):
            if event.possibleActions() & action:
                event.setDropAction(action)
                event.accept()
                return True
        event.ignore()
        return False

    def dragEnterEvent(self, event):
        if (
            event.mimeData().hasUrls()
            and any(u.isLocalFile() for u in event.mimeData().urls())
            and self._accept_as_copy(event)
        ):
            self.drop_hint.setGeometry(self.centralWidget().geometry())
            self.drop_hint.raise_()
            self.drop_hint.show()
        else:
            event.ignore()

    def dragMoveEvent(self, event):
        self._accept_as_copy(event)

    def dragLeaveEvent(self, event):
        self.drop_hint.hide()
        super().dragLeaveEvent(event)

    def dropEvent(self, event):
        self.drop_hint.hide()
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths or not self._accept_as_copy(event):
            return
        tab = self.current_tab()
        if event.modifiers() & Qt.ShiftModifier and tab is not None and len(paths) == 1:
            self.compare_paths(tab.checkpoint.path, paths[0])  # Shift+drop: compare
        else:
            self.open_paths(paths)

    def cancel_all(self):
        """Ask every computation to stop at its next step (closing, quitting)."""
        self.controller.cancel()
        for index in range(self.tabs.count()):
            widget = self.tabs.widget(index)
            if hasattr(widget, "cancel"):
                widget.cancel()
        for dialog in [*self.findChildren(QDialog), *(p.widget() for p in self.panes.values())]:
            if hasattr(dialog, "cancel"):
                dialog.cancel()
        self._update_busy()

    def closeEvent(self, event):
        self._save_size()
        self.cancel_all()
        super().closeEvent(event)
