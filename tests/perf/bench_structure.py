"""Structure and Bytes pane benchmark (issue: see the model's structure). Run by hand:

    python tests/perf/bench_structure.py [--file perf-data/train-16g.pt] [--nodes 5000] [--settle MS]

- a state_dict of NODES differently named modules (a chain of NODES blocks, as long as a big
  exported graph), laid out uncollapsed: the time to the graph drawn, and the longest GUI-thread
  stall (a 5 ms QTimer heartbeat) from opening the pane (SETTLE ms after the file loaded) to
  the graph drawn (budget 16 ms);
- the big file: the tree shown, then the Bytes pane's map drawn: the time from the tree to the
  map (budget 1 s) and the longest stall meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


class Heartbeat:
    def __init__(self, QTimer):
        self.last = time.perf_counter()
        self.worst = 0.0
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self.beat)

    def beat(self):
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last - 0.005)
        self.last = now

    def start(self):
        self.last, self.worst = time.perf_counter(), 0.0
        self.timer.start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", default=os.path.join("perf-data", "train-16g.pt"))
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--settle", type=int, default=2000, help="ms from load to the pane")
    args = parser.parse_args()
    import torch
    from PySide6.QtCore import QTimer

    from ckpt_viewer.qt import structure_view
    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    app = make_app()
    window = MainWindow()
    window.show()
    window.resize(1366, 768)
    heart = Heartbeat(QTimer)
    folder = tempfile.mkdtemp()
    whole = os.path.join(folder, "long.pt")
    torch.save({f"m{i}x.weight": torch.zeros(2) for i in range(args.nodes)}, whole)
    structure_view.ALWAYS_COLLAPSE = 10**9  # the whole graph, uncollapsed
    results = {}

    def open_structure(tab):
        start = time.perf_counter()
        heart.start()
        tab.panes.setCurrentIndex(4)
        tab.structure.ready.connect(lambda g: finish("structure", start, len(g.nodes)))

    def loaded(path):
        tab = window.current_tab()
        if path == whole:
            # once the tab has settled: the other panes' first builds are not this pane's
            QTimer.singleShot(args.settle, lambda: open_structure(tab))
        else:
            start = time.perf_counter()
            heart.start()
            tab.panes.setCurrentIndex(3)
            tab.bytes_map.ready.connect(lambda top: finish("bytes", start, top.tensors))

    def finish(name, start, size):
        results[name] = (time.perf_counter() - start, heart.worst * 1000, size)
        heart.timer.stop()
        if name == "structure" and os.path.exists(args.file):
            window.open_paths([args.file])
        else:
            app.quit()

    window.loaded.connect(loaded)
    window.open_paths([whole])
    app.exec()
    seconds, stall, size = results["structure"]
    print(
        f"structure of {size:,} modules: drawn {seconds:.1f} s after the pane opened; "
        f"worst GUI stall {stall:.1f} ms (budget 16)"
    )
    if "bytes" in results:
        seconds, stall, size = results["bytes"]
        print(
            f"bytes map of {args.file} ({size:,} tensors): {seconds:.2f} s after the tree "
            f"(budget 1 s); worst GUI stall {stall:.1f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
