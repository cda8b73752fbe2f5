"""File > Export selection: the form over core.writing.export, with a live preview of the keys written."""

from __future__ import annotations

import os
import threading

from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_viewer.core import paused_gc
from ckpt_viewer.core.listing.model import Checkpoint, format_bytes
from ckpt_viewer.core.listing.summary import suggested_root
from ckpt_viewer.core.listing.text import plural
from ckpt_viewer.core.writing.destination import default_destination
from ckpt_viewer.core.writing.export import (
    CAST_TARGETS,
    ExportPlan,
    export,
    plan_items,
    written_payload,
)
from ckpt_viewer.qt import workers
from ckpt_viewer.qt.plain import plain_label, shown
from ckpt_viewer.qt.theme import on_base

PREVIEW_LINES = 2000
PLAN_DELAY_MS = 150  # the preview is planned once typing pauses this long (keys come ~100 ms apart)
PLANNING = "planning..."  # the summary while the preview shown is an older plan's


def gpu_present() -> bool:
    """Without importing torch (a long stall on the GUI thread): is an NVIDIA driver loaded here?"""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def split_globs(text: str) -> list[str]:
    return [g for g in text.replace(",", " ").split() if g]


def preview_job(checkpoint, plan: ExportPlan) -> tuple[str, int, int]:
    """(the preview's text, tensors, bytes) of what `plan` writes: in a worker, since planning
    50,000 keys against a root and globs takes longer than a frame. Without the collector: the
    items it builds set off full collections over every open file's objects, each holding the
    GIL (the window stalled for them)."""
    with paused_gc():  # and the items go before it is back: a young collection walked them
        items, aliases, total = written_payload(plan_items(checkpoint, plan), plan.format)
        lines = [
            shown(f"{i.source_key}  ->  {i.key}   {i.dtype} {list(i.tensor.shape)}")
            for i in items[:PREVIEW_LINES]
        ]
        if len(items) > PREVIEW_LINES:
            lines.append(f"... and {len(items) - PREVIEW_LINES:,} more")
        lines += [
            shown(f"{tied}  ->  tied to {kept}: a metadata note, not a tensor (safetensors)")
            for tied, kept in list(aliases.items())[:PREVIEW_LINES]
        ]
        count = len(items)
        del items
    return "\n".join(lines), count, total


class ExportController(workers.PaneController):
    """What the export dialog computes: the preview of a plan (once typing pauses; a newer plan
    drops the one waiting or running) and the export itself, with its cancel."""

    planned = Signal(object)  # (preview text, tensors, bytes) of the latest plan
    plan_failed = Signal(str)
    progressed = Signal(float)
    exported = Signal(object)  # the ExportSummary
    export_failed = Signal(str)  # also "cancelled"

    def __init__(self, checkpoint: Checkpoint, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.checkpoint = checkpoint
        self.cancel_event = threading.Event()  # checked between 16 MB pieces of the export

    def replan(self, plan: ExportPlan) -> None:
        self.jobs.start_later(
            "plan",
            PLAN_DELAY_MS,
            preview_job,
            self.checkpoint,
            plan,
            on_result=self.planned.emit,
            on_error=self.plan_failed.emit,
        )

    def planning(self) -> bool:
        return self.jobs.busy("plan")

    def export(self, plan: ExportPlan, destination: str, replace: bool, verify: bool) -> None:
        self.cancel_event.clear()
        self.jobs.start(
            "export",
            export,
            self.checkpoint,
            plan,
            destination,
            replace,
            verify,
            self.cancel_event.is_set,
            on_progress=self.progressed.emit,
            on_result=self.exported.emit,
            on_error=self.export_failed.emit,
        )

    def exporting(self) -> bool:
        return self.jobs.busy("export")

    def stop_export(self) -> None:
        """The export stops at its next piece and removes its temporary file; it then reports
        "cancelled" as its error."""
        self.cancel_event.set()

    def cancel(self, slot: str | None = None) -> None:
        """The slot's job stops (every job when None: the dialog goes away); nothing more
        arrives from it."""
        if slot in (None, "export"):
            self.cancel_event.set()
        super().cancel(slot)


class ExportDialog(QDialog):
    finished_export = Signal(str)  # the path written, or "" when it failed / was cancelled
    planned = Signal()  # the preview shows the current plan (or why it cannot be written)

    def fields(self) -> dict:
        """What the user typed and chose, to be offered again at the next export of the file."""
        texts = {n: getattr(self, n).text() for n in ("root", "include", "exclude", "strip", "add")}
        boxes = {n: getattr(self, n).currentText() for n in ("dtype", "device", "format")}
        return {**texts, **boxes, "destination": self.destination.text()}

    def restore(self, fields: dict) -> None:
        for name, value in fields.items():
            widget = getattr(self, name)
            if isinstance(widget, QComboBox):
                widget.setCurrentText(value)
            else:
                widget.setText(value)

    def __init__(self, checkpoint, checked_keys: list[str], parent=None):
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export selection")
        self.checkpoint = checkpoint
        self.checked_keys = checked_keys
        self.controller = ExportController(checkpoint, self)  # ends with the dialog
        self.controller.planned.connect(self._planned)
        self.controller.plan_failed.connect(self._plan_failed)
        self.controller.progressed.connect(lambda value: self.progress.setValue(int(value * 1000)))
        self.controller.exported.connect(self._done)
        self.controller.export_failed.connect(self._failed)
        self.plan_totals: tuple[int, int] | None = None  # (tensors, bytes) of the current plan
        self.replace_target = ""  # the file the user agreed to replace

        self.scope = QComboBox()
        self.scope.setObjectName("exportScope")
        if checked_keys:
            self.scope.addItem(f"the {len(checked_keys):,} ticked tensors", "checked")
        self.scope.addItem("all tensors (narrow with root and globs)", "all")
        self.root = QLineEdit()
        self.root.setObjectName("exportRoot")
        self.root.setPlaceholderText("e.g. model_state_dict (keys become relative to it)")
        self.root_proposed = ""  # Root filled in for the ticked keys, until edited
        self.include = QLineEdit()
        self.include.setPlaceholderText("globs, e.g. encoder.*  (empty: everything)")
        self.exclude = QLineEdit()
        self.exclude.setPlaceholderText("globs, e.g. *.num_batches_tracked")
        self.strip = QLineEdit()
        self.strip.setObjectName("exportStrip")
        self.strip.setPlaceholderText("e.g. module.")
        self.add = QLineEdit()
        self.dtype = QComboBox()
        self.dtype.addItems(list(CAST_TARGETS))
        self.device = QComboBox()
        self.device.addItems(["cpu"] + [f"cuda:{i}" for i in range(8)])
        self.device_note = plain_label()
        self.device_note.setWordWrap(True)
        self.format = QComboBox()
        self.format.addItems(["pth", "safetensors"])
        self.destination = QLineEdit()
        self.destination.setObjectName("exportDestination")
        self.destination.setText(default_destination(checkpoint.path, checkpoint))
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        self.replace = QCheckBox("Replace the existing file")
        self.replace.setObjectName("exportReplace")
        self.replace.setVisible(False)
        self.verify = QCheckBox("Reopen and check the written file")
        self.verify.setChecked(True)

        form = QFormLayout()
        form.addRow("Tensors", self.scope)
        form.addRow("Root", self.root)
        form.addRow("Include", self.include)
        form.addRow("Exclude", self.exclude)
        form.addRow("Strip prefix", self.strip)
        form.addRow("Add prefix", self.add)
        form.addRow("Cast floats to", self.dtype)
        form.addRow("Device", self.device)
        form.addRow("", self.device_note)
        self.form = form
        form.addRow("Format", self.format)
        destination_row = QHBoxLayout()
        destination_row.addWidget(self.destination, 1)
        destination_row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(destination_row)
        destination_row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Save as", holder)
        form.addRow("", self.replace)
        form.addRow("", self.verify)

        self.preview = QPlainTextEdit()
        self.preview.setObjectName("exportPreview")
        self.preview.setReadOnly(True)
        self.preview.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.summary = plain_label()
        self.summary.setObjectName("exportSummary")
        self.summary.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.AcceptRole)
        self.export_button.setObjectName("exportButton")
        self.show_button = self.buttons.addButton("Show in Folder", QDialogButtonBox.ActionRole)
        self.show_button.setObjectName("showInFolder")
        self.show_button.setVisible(False)
        self.show_button.clicked.connect(self.show_in_folder)
        self.cancel_button = self.buttons.addButton("Close", QDialogButtonBox.RejectRole)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button.clicked.connect(self.cancel_or_close)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Keys as they will be written:"))
        layout.addWidget(self.preview, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.progress)
        layout.addWidget(self.buttons)
        self.resize(720, 720)

        self.written = ""  # the last file this dialog wrote
        for edit in (self.root, self.include, self.exclude, self.strip, self.add):
            edit.textChanged.connect(self.replan)
        for combo in (self.scope, self.dtype, self.device, self.format):
            combo.currentIndexChanged.connect(self.replan)
        self.destination.textChanged.connect(self.refresh)
        self.replace.toggled.connect(self._replace_toggled)
        self.root.textEdited.connect(self._root_edited)
        self.scope.currentIndexChanged.connect(self._propose_root)
        self.format.currentTextChanged.connect(self._match_extension)
        self._propose_root()
        self.replan()

    def _propose_root(self, *_):
        """Ticking `model_state_dict`'s tensors means its keys: load_state_dict wants them
        without the `model_state_dict.` prefix, so Root is filled in (the user may change it)."""
        if self.root.text().strip() != self.root_proposed:
            return  # typed by the user: theirs
        proposal = (
            suggested_root(self.checkpoint, self.checked_keys)
            if self.scope.currentData() == "checked"
            else ""
        )
        self.root_proposed = proposal
        self.root.setText(proposal)
        self.root.setToolTip(
            f"Proposed: the ticked tensors all lie in {proposal}, so keys are "
            "written relative to it (as load_state_dict expects)."
            if proposal
            else ""
        )

    def _root_edited(self, _text):
        self.root_proposed = None  # never overwrite what the user typed
        self.root.setToolTip("")

    def _replace_toggled(self, on):
        self.replace_target = os.path.abspath(self.destination.text().strip()) if on else ""
        self.refresh()

    # --- the plan and its live preview -----------------------------------------------------
    def plan(self) -> ExportPlan:
        return ExportPlan(
            root=self.root.text().strip(),
            include=split_globs(self.include.text()),
            exclude=split_globs(self.exclude.text()),
            strip_prefix=self.strip.text(),
            add_prefix=self.add.text(),
            dtype=self.dtype.currentText(),
            device=self.device.currentText(),
            format=self.format.currentText(),
            keys=self.checked_keys if self.scope.currentData() == "checked" else None,
        )

    def replan(self, *_):
        """The plan changed: the controller plans its preview once typing pauses; until then
        the last plan stays in sight, Export waits."""
        self.plan_totals = None
        self.controller.replan(self.plan())
        self.refresh()

    def _planned(self, result: tuple[str, int, int]):
        text, tensors, total = result
        self.preview.setPlainText(text)
        self.plan_totals = tensors, total
        self.refresh()
        self.planned.emit()

    def _plan_failed(self, message: str):
        self.plan_totals = None
        self._problem(message)
        self.planned.emit()

    def refresh(self, *_):
        """What depends on the destination and the device, and Export's state."""
        destination = self.destination.text().strip()
        exists = bool(destination) and os.path.exists(destination)
        if self.replace.isChecked() and os.path.abspath(destination) != self.replace_target:
            self.replace.blockSignals(True)  # agreeing to replace one file is not for another
            self.replace.setChecked(False)
            self.replace.blockSignals(False)
            self.replace_target = ""
        self.replace.setVisible(exists)
        self._note_device()
        if self.plan_totals is None:  # being planned, or cannot be written (said so)
            self.export_button.setEnabled(False)
            if self.controller.planning():
                self.summary.setStyleSheet("")
                self.summary.setText(PLANNING)
            return
        tensors, total = self.plan_totals
        blocked = exists and not self.replace.isChecked()
        self.summary.setStyleSheet("")
        self.summary.setText(f"{plural(tensors, 'tensor')}, {format_bytes(total)}")
        if exists:
            self.summary.setText(
                self.summary.text()
                + (
                    f"; replaces {os.path.basename(destination)}"
                    if not blocked
                    else f". {os.path.basename(destination)} exists: tick 'Replace the existing file' "
                    "or choose another name"
                )
            )
            self.summary.setStyleSheet(f"color: {on_base('#8a5300').name()};" if blocked else "")
        self.export_button.setEnabled(bool(tensors) and bool(destination) and not blocked)

    def _note_device(self):
        if self.device.currentText().startswith("cuda"):
            where = self.device.currentText()
            self.device_note.setText(
                f"The file records {where} as each tensor's location: a plain torch.load puts "
                f"them on that GPU. "
                + (
                    "Casting will run on this machine's GPU."
                    if gpu_present()
                    else "No GPU here: the file is still written with "
                    f"{where} tags and loads onto the GPU elsewhere."
                )
            )
        else:
            self.device_note.setText("")
        self.form.setRowVisible(self.device_note, bool(self.device_note.text()))

    def _problem(self, message: str, keep_preview: bool = False):
        if not keep_preview:
            self.preview.setPlainText("")
        self.summary.setStyleSheet(f"color: {on_base('#b02a37').name()};")
        self.summary.setText(message)
        self.export_button.setEnabled(False)

    def _match_extension(self, fmt: str):
        base, ext = os.path.splitext(self.destination.text())
        if ext in (".pth", ".pt", ".bin", ".safetensors"):
            self.destination.setText(base + (".safetensors" if fmt == "safetensors" else ".pth"))

    def _browse(self):
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export to",
            self.destination.text(),
            "PyTorch (*.pth *.pt);;safetensors (*.safetensors)",
        )
        if path:
            self.destination.setText(path)
            self.format.setCurrentText("safetensors" if path.endswith(".safetensors") else "pth")

    # --- running ---------------------------------------------------------------------------
    def start_export(self):
        destination = self.destination.text().strip()
        if os.path.exists(destination) and not self.replace.isChecked():
            self.refresh()  # says so, and keeps Export off until ticked
            return
        self.show_button.setVisible(False)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.export_button.setEnabled(False)
        self.cancel_button.setText("Cancel")
        self.summary.setStyleSheet("")
        self.summary.setText("Writing...")
        self.controller.export(
            self.plan(), destination, self.replace.isChecked(), self.verify.isChecked()
        )

    def _done(self, summary):
        self.written = summary.path
        if os.path.abspath(self.destination.text().strip()) == summary.path:
            self.replace_target = summary.path  # exporting again replaces what we just wrote
            self.replace.blockSignals(True)
            self.replace.setChecked(True)
            self.replace.blockSignals(False)
        self._idle()
        self.show_button.setVisible(True)
        checked = ", checked after writing" if summary.verified else ""
        self.summary.setText(
            f"Wrote {summary.path}: {plural(summary.tensors, 'tensor')}, "
            f"{format_bytes(summary.bytes)}, {summary.format}, location "
            f"{summary.device}{checked}."
        )
        self.finished_export.emit(summary.path)

    def _failed(self, message):
        self._idle()
        self._problem(message, keep_preview=True)  # the plan is still the one to write
        self.export_button.setEnabled(True)
        self.finished_export.emit("")

    def _idle(self):
        self.progress.setVisible(False)
        self.cancel_button.setText("Close")
        self.refresh()

    def show_in_folder(self):
        """The folder of the written file in the desktop's file manager."""
        if self.written:
            QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(self.written)))

    def cancel_or_close(self):
        if self.controller.exporting():
            self.controller.stop_export()
            return
        self.reject()

    def cancel(self):
        """The dialog goes away (closed, window quitting): stop writing, drop late results."""
        self.controller.cancel()

    def closeEvent(self, event):
        self.cancel()
        super().closeEvent(event)

    def reject(self):
        self.cancel()
        super().reject()

    def keyPressEvent(self, event):
        if event.key() == Qt.Key_Escape and self.controller.exporting():
            self.controller.stop_export()
            return
        super().keyPressEvent(event)
