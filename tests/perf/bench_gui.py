"""GUI benchmarks (issues: desktop app, tensor views). Run by hand, offscreen:

    python tests/perf/bench_gui.py [--data perf-data]

- first window on screen after launch, against `python -c "import torch, PySide6.QtWidgets,
  pyqtgraph"` (fresh processes, median of 3);
- the longest GUI-thread stall (a 5 ms QTimer heartbeat) while each big file loads and while
  its largest tensor's statistics are computed;
- the 50,000-key file: tree shown after load, the time of each filter keystroke, and the
  longest stall from the first key through the filter's apply and paint, and on clearing it;
- sampled preview on screen after selecting the 100M-element tensor;
- the longest stall while the export dialog writes the 2.6 GB file's model_state_dict;
- the longest stall while Tools > Verify reads the 2.6 GB file, while Compare diffs it against
  its legacy twin, and while the comparison tab plots its largest tensor.

- the longest stall while Tools > Health checks the 16 GB file, and the time to its report.

- `flows` (issue #23, budget one frame, 16 ms): the worst GUI stall in each interactive flow over
  the 50,000-key file, printed as a table: opening it (with the panes and plot built after it
  shows), selecting a tensor with two other files open (three with the 16 GB file, opened too
  where it exists), Compare against its twin (the diff and its tab appearing, the first
  click, then a row click), a keystroke in the export preview with a root and two globs, the
  tab shown again after it (its whole repaint), Expand All (until its passes end; and Collapse
  All), a header click that sorts, typing in the filter, and the Bytes
  pane's first showing (its treemap drawn). The twin and the nested copy it needs are written
  to a temporary folder under --out (or --data).

`--runs N` runs the flows N times, each in a fresh process (ours compiled to cached bytecode
first, as an installed app has it), and prints one table: per flow the worst stall, the GUI
thread's CPU time in it and the most CPU time it spent in any one stall (its own work: on a loaded
machine the stall also counts waiting for a core), each min / median / max, against the 16 ms
goal, OVER or ok by the median worst stall. A run that fails is reported with its exit status and
the end of its stderr, the table made from the others, and the exit status is then 1.

`--only export,verify,compare` runs just those parts (names: window, load, layers, health,
export, verify, compare, keys, flows; layers and health need load); `--out DIR` puts the exported
file there instead of beside the data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# an installed app runs from cached bytecode: without it each run's first Compare compiled the
# modules it imports, on the GUI thread (see runner.py)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
GOAL_MS = 16.0  # one frame

FIRST_WINDOW = """
import sys
from ckpt_viewer.qt.app import make_app
from ckpt_viewer.qt.main_window import MainWindow
app = make_app()
w = MainWindow(); w.show()
app.processEvents()
print("shown", flush=True)
"""


def first_window():
    """Launch to the window's first paint (the child says so on stdout), median of 3."""
    ours, base = [], []
    for _ in range(3):
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", FIRST_WINDOW],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if child.stdout.readline().strip() != "shown":
            _, errors = child.communicate()
            raise SystemExit(f"the first-window child exited {child.wait()}:\n{errors[-2000:]}")
        ours.append(time.perf_counter() - start)
        child.communicate()
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import torch, PySide6.QtWidgets, pyqtgraph"], check=True
        )
        base.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(base)


class Heartbeat:
    """Longest gap between 5 ms timer ticks: how long the GUI thread was not answering, and
    the CPU time the GUI thread itself spent in that gap (the rest went to waiting: for the
    GIL, or for a core on a busy machine). `most_cpu` is the most CPU time the GUI thread
    spent in any one gap: its own work, which a loaded machine does not inflate."""

    def __init__(self):
        from PySide6.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self.tick)
        self.last = self.last_cpu = 0.0
        self.worst = self.worst_cpu = self.most_cpu = 0.0

    def tick(self):
        now, cpu = time.perf_counter(), time.thread_time()
        if now - self.last - 0.005 > self.worst:
            self.worst, self.worst_cpu = now - self.last - 0.005, cpu - self.last_cpu
        self.most_cpu = max(self.most_cpu, cpu - self.last_cpu)
        self.last, self.last_cpu = now, cpu

    def start(self):
        # from now: work done before the first tick is a stall too
        self.last, self.last_cpu = time.perf_counter(), time.thread_time()
        self.worst = self.worst_cpu = self.most_cpu = 0.0
        self.timer.start()

    def stop(self):
        self.timer.stop()
        return self.worst


def wait_for(app, condition, timeout=600):
    start = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - start > timeout:
            raise SystemExit("timed out")


def open_and_wait(app, window, path):
    done = []
    window.loaded.connect(done.append)
    window.open_paths([path])
    wait_for(app, lambda: done)
    window.loaded.disconnect(done.append)


def typing(app, tab, text, beat, interval=0.08):
    """Keys arrive every `interval` s: (seconds from each key's due time until the field has
    painted it, seconds from the last key until the tree has painted the filtered rows, the
    worst GUI stall from the first key through the filter's apply and that paint)."""
    applied = []
    tab.filter_applied.connect(applied.append)
    times = typing_into(app, tab.filter, text, beat, interval)
    last = time.perf_counter()
    wait_for(app, lambda: text in applied)
    tab.tree.viewport().repaint()
    done = time.perf_counter() - last
    settle(app)
    tab.filter_applied.disconnect(applied.append)
    return times, done, beat.stop()


def settle(app, seconds=0.2):
    """Run the event loop a moment, so that work queued by the last step (layout, deferred
    expansion) is inside the heartbeat's watch."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="perf-data")
    parser.add_argument(
        "--only", default="window,load,layers,health,export,verify,compare,keys,flows"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="skip the export timing (it writes a 2.6 GB file into --data)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="flows only: run them this many times, each in a fresh process, and print each "
        "row's min / median / max",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs > 1:
        flows_runs(args)
        return
    parts = set(args.only.split(","))
    if "window" in parts:
        ours, base = first_window()
        print(
            f"first window on screen: {ours:.3f} s vs import torch+PySide6+pyqtgraph "
            f"{base:.3f} s -> ratio {ours / base:.3f} (budget 0.5)"
        )

    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    app = make_app()
    window = MainWindow()
    window.show()
    beat = Heartbeat()
    for name in ("train-2g6-legacy.pt", "train-16g.pt", "stats-100m.pt"):
        path = os.path.abspath(os.path.join(args.data, name))
        if "load" not in parts or not os.path.exists(path):
            continue
        done = []
        window.loaded.connect(done.append)
        beat.start()
        start = time.perf_counter()
        window.open_paths([path])
        wait_for(app, lambda: done)
        load_time, load_stall = time.perf_counter() - start, beat.stop()
        window.loaded.disconnect(done.append)
        tab = window.current_tab()
        if "layers" in parts and name == "train-16g.pt":
            first, exact = [], []
            beat.start()
            start = time.perf_counter()
            dialog = window.layers_current()
            dialog.preview_ready.connect(lambda _: first.append(time.perf_counter() - start))
            dialog.ready.connect(lambda _: exact.append(time.perf_counter() - start))
            wait_for(app, lambda: exact)
            layers_stall = beat.stop()
            print(
                f"{name}: Tools > Layers, first (sampled) plot on screen "
                f"{first[0] if first else float('nan'):.3f} s (budget 2 s), exact plot "
                f"{exact[0]:.3f} s, worst GUI stall {1000 * layers_stall:.1f} ms (budget 50 ms)"
            )
            dialog.close()
        if "health" in parts and name == "train-16g.pt":
            checked = []
            beat.start()
            start = time.perf_counter()
            dialog = window.health_current()
            dialog.checked.connect(lambda report: checked.append(time.perf_counter() - start))
            wait_for(app, lambda: checked)
            app.processEvents()  # the findings list painted
            print(
                f"{name}: Tools > Health, report after {checked[0]:.2f} s "
                f"({len(dialog.report.findings):,} findings), worst GUI stall "
                f"{1000 * beat.stop():.1f} ms (budget 50 ms)"
            )
            dialog.close()
        ready, preview = [], []
        tab.tensor_view.view_ready.connect(ready.append)
        tab.tensor_view.preview_ready.connect(lambda key: preview.append(time.perf_counter()))
        beat.start()
        start = time.perf_counter()
        tab.select_key(tab.largest_tensor_key())
        wait_for(app, lambda: ready)
        stats_time, stats_stall = time.perf_counter() - start, beat.stop()
        preview_text = f", preview after {1000 * (preview[0] - start):.0f} ms" if preview else ""
        print(
            f"{name}: loaded in {load_time:.3f} s, worst GUI stall {1000 * load_stall:.1f} ms; "
            f"largest tensor stats in {stats_time:.2f} s, worst stall "
            f"{1000 * stats_stall:.1f} ms{preview_text} (budget 50 ms stall, 100 ms preview)"
        )

    source = os.path.abspath(os.path.join(args.data, "train-2g6.pt"))
    if "export" in parts and os.path.exists(source) and not args.no_export:
        from ckpt_viewer.qt.export_dialog import ExportDialog

        open_and_wait(app, window, source)
        dialog = ExportDialog(window.current_tab().checkpoint, [], window)
        dialog.root.setText("model_state_dict")
        target = os.path.join(args.out or args.data, "bench-gui-export.pth")
        dialog.destination.setText(target)
        dialog.replace.setChecked(True)
        dialog.show()
        finished = []
        dialog.finished_export.connect(finished.append)
        beat.start()
        start = time.perf_counter()
        dialog.start_export()
        wait_for(app, lambda: finished)
        print(
            f"export of the 2.6 GB file's model_state_dict from the dialog: "
            f"{time.perf_counter() - start:.2f} s, worst GUI stall {1000 * beat.stop():.1f} ms "
            f"(budget 50 ms)"
        )
        if os.path.exists(target):
            os.remove(target)

    if "verify" in parts and os.path.exists(source):
        if window.current_tab() is None or window.current_tab().checkpoint.path != source:
            open_and_wait(app, window, source)
        verified = []
        window.verified.connect(lambda *args: verified.append(args))
        beat.start()
        start = time.perf_counter()
        window.verify_current()
        wait_for(app, lambda: verified)
        print(
            f"verify of the 2.6 GB file from Tools > Verify: {time.perf_counter() - start:.2f} s, "
            f"{'intact' if verified[0][1] else 'damaged'}, worst GUI stall "
            f"{1000 * beat.stop():.1f} ms (budget 50 ms)"
        )
        for box in window.findChildren(object, "verifyResult"):
            box.close()

    twin = os.path.abspath(os.path.join(args.data, "train-2g6-legacy.pt"))
    if "compare" in parts and os.path.exists(source) and os.path.exists(twin):
        compared = []
        window.compared.connect(lambda *args: compared.append(args))
        beat.start()
        start = time.perf_counter()
        window.compare_paths(source, twin)
        wait_for(app, lambda: compared)
        diff_time, diff_stall = time.perf_counter() - start, beat.stop()
        view = window.tabs.currentWidget()
        largest = max(view.report.tensors, key=lambda t: math.prod(t.shape_a))
        proxy = view.table.model()
        row = next(r for r in range(proxy.rowCount()) if proxy.index(r, 0).data() == largest.key)
        drawn = []
        view.overlay_ready.connect(drawn.append)
        beat.start()
        start = time.perf_counter()
        view.table.setCurrentIndex(proxy.index(row, 0))
        wait_for(app, lambda: drawn)
        print(
            f"compare of the 2.6 GB file with its legacy twin: {diff_time:.2f} s, worst GUI "
            f"stall {1000 * diff_stall:.1f} ms; plots of {largest.key} "
            f"({math.prod(largest.shape_a):,} elements) in "
            f"{time.perf_counter() - start:.2f} s, worst stall {1000 * beat.stop():.1f} ms "
            f"(budget 50 ms)"
        )

    path = os.path.abspath(os.path.join(args.data, "keys-50k.pt"))
    if "keys" in parts and os.path.exists(path):
        done = []
        window.loaded.connect(done.append)
        beat.start()
        start = time.perf_counter()
        window.open_paths([path])
        wait_for(app, lambda: done)
        tab = window.current_tab()
        tab.tree.viewport().repaint()
        shown = time.perf_counter() - start
        load_stall = beat.stop()
        beat.start()  # what follows the load: the idle-time plotting import
        settle(app, 0.5)
        after_stall = beat.stop()
        for typed in ("layers.12*.sub3", "layer4999"):
            times, applied, stall = typing(app, tab, typed, beat)
            print(
                f"keys-50k.pt: typing {typed!r} at 80 ms a key: each character on screen within "
                f"worst {1000 * max(times):.1f} ms, median {1000 * statistics.median(times):.1f} "
                f"ms (budget 50 ms); tree filtered and painted {1000 * applied:.0f} ms after the "
                f"last key; worst GUI stall while typing and applying {1000 * stall:.1f} ms "
                f"(budget 50 ms)"
            )
            cleared = []
            tab.filter_applied.connect(cleared.append)
            beat.start()
            start = time.perf_counter()
            tab.filter.setText("")
            wait_for(app, lambda: cleared)
            tab.tree.viewport().repaint()
            clear_time = time.perf_counter() - start
            settle(app)
            tab.filter_applied.disconnect(cleared.append)
            print(
                f"keys-50k.pt: clearing {typed!r}: whole tree back and painted in "
                f"{1000 * clear_time:.0f} ms, worst GUI stall {1000 * beat.stop():.1f} ms "
                f"(budget 50 ms)"
            )
        print(
            f"keys-50k.pt: tree shown {shown:.3f} s after open (budget 1 s), worst GUI stall "
            f"{1000 * load_stall:.1f} ms until then, {1000 * after_stall:.1f} ms in the 0.5 s "
            f"after (budget 50 ms)"
        )

    path = os.path.abspath(os.path.join(args.data, "keys-50k.pt"))
    if "flows" in parts and os.path.exists(path):
        flows(app, window, beat, path, args.out or args.data, args.json)


def flows_runs(args) -> None:
    """`flows` in args.runs fresh processes (a first selection is first only once a process),
    then one table of every row over the runs that ended well; a failed run is reported with
    its stderr (exit status 1 at the end)."""
    import compileall

    package = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ckpt_viewer")
    compileall.compile_dir(package, quiet=2)
    runs, failed = [], 0
    load = os.getloadavg()[0]
    for number in range(1, args.runs + 1):
        command = [sys.executable, __file__, "--only", "flows", "--data", args.data, "--json"]
        child = subprocess.run(
            command + (["--out", args.out] if args.out else []), capture_output=True, text=True
        )
        line = next((x for x in child.stdout.splitlines() if x.startswith("FLOWS ")), None)
        if child.returncode or line is None:
            failed += 1
            what = "no table" if line is None else "a table"
            print(
                f"run {number} of {args.runs} failed: exit status {child.returncode}, {what} on "
                f"stdout; its stderr ends:\n{child.stderr[-3000:] or '(empty)'}\n",
                file=sys.stderr,
            )
            continue
        runs.append(json.loads(line[len("FLOWS ") :]))
    if runs:
        print_flows(runs, f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if failed:
        raise SystemExit(1)


def print_flows(runs: list, load: str) -> None:
    """The flows' table: per row, min / median / max over the runs of the worst stall (wall),
    the GUI thread's CPU in it and the most it spent in one stall; OVER or ok by the median
    worst stall against GOAL_MS, noting where the GUI thread's own work stayed under it."""

    def spread(values: list) -> str:
        low, mid, high = min(values), statistics.median(values), max(values)
        return f"{1000 * low:.1f} / {1000 * mid:.1f} / {1000 * high:.1f}"

    print(
        f"\n| flow (keys-50k.pt), {len(runs)} run{'s' if len(runs) > 1 else ''}, ms min / median "
        "/ max | worst GUI stall | GUI-thread CPU in it | most GUI-thread CPU in one stall | "
        "goal | median |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for row, name in enumerate(r[0] for r in runs[0]):
        walls, cpus, most = ([run[row][i] for run in runs] for i in (1, 2, 3))
        over = 1000 * statistics.median(walls) > GOAL_MS
        verdict = "OVER" if over else "ok"
        if over and 1000 * statistics.median(most) <= GOAL_MS:
            verdict += " (own CPU under it)"
        print(
            f"| {name} | {spread(walls)} | {spread(cpus)} | {spread(most)} | {GOAL_MS:.0f} ms "
            f"| {verdict} |"
        )
    print(f"(load average {load}, on {os.cpu_count()} cores)")


def stall_of(app, beat, action, done=lambda: True, repeat=1):
    """The worst GUI stall over `repeat` runs of action(i), each until done() and a settle:
    (seconds, the GUI thread's CPU seconds in it, the most CPU seconds in any one gap)."""
    worst, most = (0.0, 0.0), 0.0
    for i in range(repeat):
        beat.start()
        action(i)
        wait_for(app, done)
        settle(app)
        worst = max(worst, (beat.stop(), beat.worst_cpu))
        most = max(most, beat.most_cpu)
    return (*worst, most)


def measured(beat):
    """The heartbeat's figures since its start, as stall_of returns them (it stops it)."""
    return beat.stop(), beat.worst_cpu, beat.most_cpu


def flows(app, window, beat, path, out, as_json=False):
    """One row per interactive flow over the 50,000-key file: its worst GUI-thread stall."""
    import shutil
    import tempfile

    import torch
    from PySide6.QtCore import Qt

    from ckpt_viewer.qt.export_dialog import ExportDialog

    folder = tempfile.mkdtemp(prefix="bench-gui-flows-", dir=out)
    try:
        twin = os.path.join(folder, "keys-50k-twin.pt")
        shutil.copyfile(path, twin)
        nested = os.path.join(folder, "keys-50k-nested.pt")
        torch.save({"model": torch.load(path, weights_only=True)}, nested)
        rows = []
        tabs = {}
        big = os.path.join(os.path.dirname(path), "train-16g.pt")  # open too, where present
        others = [nested, twin] + ([big] if os.path.exists(big) else [])
        for name in others:
            if window._tab_of_path(name) is None:
                open_and_wait(app, window, name)
            tabs[name] = window._tab_of_path(name)
        settle(app, 0.5)
        # its own row: after `loaded` the tab builds its panes and plot (timers), which a
        # selection made at once used to be charged with
        beat.start()
        if window._tab_of_path(path) is None:
            open_and_wait(app, window, path)
        settle(app, 0.5)
        rows.append(("open it (the tab, then its panes and plot)", measured(beat)))
        tabs[path] = tab = window._tab_of_path(path)
        window.tabs.setCurrentWidget(tab)
        settle(app)
        ready = []
        tab.tensor_view.view_ready.connect(ready.append)
        keys = [f"layers.{i * 499}.sub{i % 10}.weight" for i in range(1, 7)]
        first = stall_of(app, beat, lambda i: tab.select_key(keys[0]), lambda: bool(ready))
        rows.append(("select: the first tensor (opens its 5,000-row group, in ranges)", first))

        def select(i):
            ready.clear()
            tab.select_key(keys[i + 1])

        rows.append(
            (
                f"select a tensor ({len(others)} other files open)",
                stall_of(app, beat, select, lambda: bool(ready), repeat=5),
            )
        )

        compared = []
        window.compared.connect(lambda *args: compared.append(args))
        beat.start()
        window.compare_paths(path, twin)
        wait_for(app, lambda: compared)
        settle(app, 0.5)  # and its plots, built ahead a piece at a time
        rows.append(("Compare: the diff, then its tab (50,000 rows) appearing", measured(beat)))
        view = window.tabs.currentWidget()
        proxy = view.table.model()
        drawn = []
        view.overlay_ready.connect(drawn.append)

        def click(i):
            drawn.clear()
            view.table.setCurrentIndex(proxy.index(1000 * i + 5, 0))

        beat.start()
        click(0)  # the plots' first data and first paint: not a repeated cost
        wait_for(app, lambda: bool(drawn))
        settle(app)
        rows.append(("Compare: the first click (its plots' first paint)", measured(beat)))

        rows.append(
            (
                "Compare: click a row",
                stall_of(app, beat, lambda i: click(i + 1), lambda: bool(drawn), 5),
            )
        )

        window.tabs.setCurrentWidget(tabs[nested])
        dialog = ExportDialog(tabs[nested].checkpoint, [], window)
        dialog.show()
        planned = []
        dialog.planned.connect(lambda: planned.append(dialog.include.text()))
        dialog.root.setText("model")
        dialog.exclude.setText("*sub3*")
        wait_for(app, lambda: planned and not dialog.controller.busy())
        settle(app)
        typed = "*.weight layers.1*"
        typing_into(app, dialog.include, typed, beat)
        wait_for(app, lambda: typed in planned and not dialog.controller.busy())
        settle(app)
        rows.append(("export preview: typing a glob (root + 2 globs)", measured(beat)))
        dialog.close()
        settle(app)

        # its own row: the tab shown again repaints whole, which Expand All was charged with
        rows.append(
            (
                "back to the 50,000-key tab (its repaint)",
                stall_of(app, beat, lambda i: window.tabs.setCurrentWidget(tab)),
            )
        )
        header = tab.tree.header()

        def sort(i):
            column = (0, 0, 2)[i]
            order = (Qt.DescendingOrder, Qt.AscendingOrder, Qt.DescendingOrder)[i]
            header.setSortIndicator(column, order)  # what a click on the header does

        expand = window.findChild(object, "actionExpandAll")
        collapse = window.findChild(object, "actionCollapseAll")
        rows.append(
            (
                "View > Expand All (the rows in view, a pass per turn)",
                stall_of(app, beat, lambda i: expand.trigger(), lambda: not tab.expander.busy()),
            )
        )
        rows.append(("sort: header click (all expanded)", stall_of(app, beat, sort, repeat=3)))
        header.setSortIndicator(0, Qt.AscendingOrder)
        settle(app)
        rows.append(("View > Collapse All", stall_of(app, beat, lambda i: collapse.trigger())))

        typing(app, tab, "layers.12*.sub3", beat)
        rows.append(("filter: typing (and its apply)", (beat.worst, beat.worst_cpu, beat.most_cpu)))
        cleared = []
        tab.filter_applied.connect(cleared.append)
        rows.append(
            (
                "filter: clearing",
                stall_of(app, beat, lambda i: tab.filter.setText(""), lambda: bool(cleared)),
            )
        )

        drawn = []

        def bytes_pane(i):
            tab.panes.setCurrentIndex(3)  # built when first shown, its map drawn in a worker
            tab.bytes_map.ready.connect(drawn.append)

        rows.append(
            (
                "Bytes: the pane and its map's first draw",
                stall_of(app, beat, bytes_pane, lambda: bool(drawn)),
            )
        )

        if as_json:
            print("FLOWS " + json.dumps([[name, *figures] for name, figures in rows]))
            return
        print_flows([[[name, *figures] for name, figures in rows]], f"{os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def typing_into(app, edit, text, beat, interval=0.08):
    """Keys into `edit` every `interval` s; the heartbeat keeps running (the caller stops it
    once what the last key started has arrived). Returns, per key, the seconds from its due
    time until the field has painted it."""
    times = []
    beat.start()
    start = time.perf_counter()
    for i in range(1, len(text) + 1):
        due = start + interval * (i - 1)
        while time.perf_counter() < due:
            app.processEvents()
            time.sleep(0.001)
        edit.setText(text[:i])
        edit.repaint()
        times.append(time.perf_counter() - due)
    return times


if __name__ == "__main__":
    main()
