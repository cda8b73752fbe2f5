"""Structure and Bytes pane benchmark (issue: see the model's structure). Run by hand:

    python tests/perf/bench_structure.py [--file perf-data/train-16g.pt] [--nodes 5000]
        [--shapes chain,tree] [--settle MS]

For each shape, a checkpoint of NODES modules laid out uncollapsed: `chain`, a state_dict of
NODES differently named modules (a chain as long as a big exported graph, tall: few nodes in
view at once); `tree`, a whole pickled model of blocks of Linear layers (a module tree, wide:
thousands of nodes in view when zoomed out). Rows, each with the longest GUI-thread stall (a
5 ms QTimer heartbeat; budget 16 ms, one frame) and how much of it the GUI thread was on the CPU
(on a shared machine the rest is mostly waiting for a core). Run it with bytecode caching on (no
PYTHONDONTWRITEBYTECODE), as an installed app has it: else the first import compiles the pane:
- open: from opening the pane (SETTLE ms after the file loaded; the first one imports the pane's
  module, as a user's first opening does) to the graph's first paint done;
- pan/zoom: wheel steps out from where it opened to past the whole graph in view, a drag at
  a few zooms (each step its own event, painted before the next);
- find: the last node's label typed a key at a time (each match marked and centred), then
  text no node has;
- the big file: the tree shown, then the Bytes pane's map drawn: the time from the tree to the
  map (budget 1 s) and the longest stall meanwhile.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


class Heartbeat:
    """The longest gap between beats beyond the 5 ms interval, how much of it the GUI thread
    spent on the CPU (the rest it waited: for a core on a busy machine, for the GIL), and the
    most CPU it spent between any two beats."""

    def __init__(self, QTimer):
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self.beat)
        self.start()
        self.timer.stop()

    def beat(self):
        now, cpu = time.perf_counter(), time.thread_time()
        if now - self.last - 0.005 > self.worst:
            self.worst, self.busy = now - self.last - 0.005, cpu - self.cpu
        self.busiest = max(self.busiest, cpu - self.cpu)
        self.last, self.cpu = now, cpu

    def start(self):
        self.last, self.cpu = time.perf_counter(), time.thread_time()
        self.worst = self.busy = self.busiest = 0.0
        self.timer.start()

    def stop(self) -> str:
        """The worst stall, the time since the last beat included."""
        self.beat()
        self.timer.stop()
        return (
            f"{self.worst * 1000:.1f} ms (GUI thread busy {self.busy * 1000:.1f} ms of it; "
            f"at most {self.busiest * 1000:.1f} ms between two beats)"
        )


def _save(shape: str, nodes: int, path: str) -> None:
    import torch

    if shape == "chain":
        torch.save({f"m{i}x.weight": torch.zeros(2) for i in range(nodes)}, path)
    else:  # root -> blocks -> 49 Linear each: nodes modules in all
        blocks = max(1, nodes // 50)

        def block():
            return torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(49)])

        torch.save(torch.nn.Sequential(*[block() for _ in range(blocks)]), path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", default=os.path.join("perf-data", "train-16g.pt"))
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--shapes", default="chain,tree")
    parser.add_argument("--settle", type=int, default=2000, help="ms from load to the pane")
    args = parser.parse_args()
    from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, Qt, QTimer
    from PySide6.QtGui import QMouseEvent, QWheelEvent
    from PySide6.QtWidgets import QApplication

    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    app = make_app()
    window = MainWindow()
    window.show()
    window.resize(1366, 768)
    heart = Heartbeat(QTimer)
    folder = tempfile.mkdtemp()
    shapes = [s for s in args.shapes.split(",") if s]
    paths = {os.path.join(folder, f"{s}.pt"): s for s in shapes}
    for path, shape in paths.items():
        _save(shape, args.nodes, path)
    results = []
    pending = list(paths) + ([args.file] if os.path.exists(args.file) else [])

    class FirstPaint(QObject):
        """Calls `then` once the view's next paint is done."""

        def __init__(self, viewport, then):
            super().__init__()
            self.viewport, self.then = viewport, then
            viewport.installEventFilter(self)

        def eventFilter(self, watched, event):
            if event.type() == QEvent.Paint:
                self.viewport.removeEventFilter(self)
                QTimer.singleShot(0, self.then)
            return False

    def open_structure(tab, shape):
        start = time.perf_counter()
        heart.start()
        from ckpt_viewer.qt import structure_view  # the first pane's import is the user's wait

        structure_view.ALWAYS_COLLAPSE = 10**9  # the whole graph, uncollapsed
        tab.panes.setCurrentIndex(4)
        view = tab.structure

        def drawn(graph):
            def painted():
                stall = heart.stop()
                results.append(
                    f"structure ({shape}, {len(graph.nodes):,} nodes, "
                    f"{len(graph.edges):,} edges): drawn {time.perf_counter() - start:.1f} s "
                    f"after the pane opened; worst GUI stall {stall} (budget 16)"
                )
                QTimer.singleShot(200, lambda: pan_zoom(view, shape))

            view._first_paint = FirstPaint(view.view.viewport(), painted)

        view.ready.connect(drawn)

    def pan_zoom(view, shape):
        graph_view, viewport = view.view, view.view.viewport()
        centre = QPointF(viewport.width() / 2, viewport.height() / 2)
        fit = min(
            viewport.width() / view.drawing.bounds.width(),
            viewport.height() / view.drawing.bounds.height(),
        )
        outs = math.ceil(math.log(graph_view.transform().m11() / fit, 1.2)) + 2
        steps = []

        def wheel():
            where = QPointF(viewport.mapToGlobal(centre.toPoint()))
            event = QWheelEvent(
                centre, where, QPoint(), QPoint(0, -120), Qt.NoButton, Qt.NoModifier,
                Qt.NoScrollPhase, False,
            )  # fmt: skip
            QApplication.sendEvent(viewport, event)

        def mouse(kind, dx):
            point = centre + QPointF(dx, dx / 2)
            buttons = Qt.NoButton if kind == QEvent.MouseButtonRelease else Qt.LeftButton
            event = QMouseEvent(
                kind, point, QPointF(viewport.mapToGlobal(point.toPoint())), Qt.LeftButton,
                buttons, Qt.NoModifier,
            )  # fmt: skip
            QApplication.sendEvent(viewport, event)

        drags = 0
        drag = [lambda: mouse(QEvent.MouseButtonPress, 0)]
        drag += [lambda d=d: mouse(QEvent.MouseMove, d) for d in range(40, 281, 40)]
        drag += [lambda: mouse(QEvent.MouseButtonRelease, 280)]
        for step in range(outs):
            steps.append(wheel)
            if step % 8 == 0 or step == outs - 1:
                steps += drag
                drags += 1

        def run(index=0):
            if index < len(steps):
                steps[index]()
                QTimer.singleShot(30, lambda: run(index + 1))  # painted in between
                return
            stall = heart.stop()
            results.append(
                f"pan/zoom ({shape}): {outs} wheel steps out to "
                f"{graph_view.transform().m11():.4f} (whole graph at {fit:.4f}), "
                f"{drags} drags; worst GUI stall {stall} (budget 16)"
            )
            QTimer.singleShot(200, lambda: find(view, shape))

        heart.start()
        run()

    def find(view, shape):
        """Typing into find, a key at a time: a node far down, then text no node has."""
        last = view.graph.nodes[-1].label
        typed = [last[:n] for n in range(1, len(last) + 1)] + ["zzz", ""]

        def run(index=0):
            if index < len(typed):
                view.find.setText(typed[index])
                QTimer.singleShot(30, lambda: run(index + 1))
                return
            stall = heart.stop()
            results.append(
                f"find ({shape}): typed {typed[:-1]}, each found and shown; worst GUI stall "
                f"{stall} (budget 16)"
            )
            next_file()

        heart.start()
        run()

    def next_file():
        if pending:
            window.open_paths([pending.pop(0)])
        else:
            app.quit()

    def loaded(path):
        tab = window.current_tab()
        if path in paths:
            # once the tab has settled: the other panes' first builds are not this pane's
            QTimer.singleShot(args.settle, lambda: open_structure(tab, paths[path]))
            return
        start = time.perf_counter()
        heart.start()
        tab.panes.setCurrentIndex(3)

        def drawn(top):
            stall = heart.stop()
            results.append(
                f"bytes map of {path} ({top.tensors:,} tensors): "
                f"{time.perf_counter() - start:.2f} s after the tree (budget 1 s); "
                f"worst GUI stall {stall}"
            )
            next_file()

        tab.bytes_map.ready.connect(drawn)

    window.loaded.connect(loaded)
    next_file()
    app.exec()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("\n".join(results))


if __name__ == "__main__":
    sys.exit(main())
