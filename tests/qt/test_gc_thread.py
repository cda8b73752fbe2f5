"""Cyclic garbage holding Qt objects is freed on the GUI thread, never on a worker's."""

import gc
import threading

from PySide6.QtCore import QObject


def test_cyclic_garbage_is_collected_on_the_gui_thread_only(qtbot, window):
    from ckpt_viewer.qt.plotting import _plotting, preload_plotting

    assert not gc.isenabled()  # the window's collector runs on the GUI thread's timer
    # the window imports pyqtgraph when idle, freezing what that makes (a bulk) as it goes:
    # the cycle below with it, when it was made first (a frozen cycle waits for a tab's close)
    preload_plotting()
    qtbot.waitUntil(_plotting["settled"].is_set, timeout=60_000)
    destroyed_on = []

    def garbage():
        holder = QObject()
        holder.cycle = holder  # only the cycle collector can free it
        holder.destroyed.connect(lambda *_: destroyed_on.append(threading.current_thread()))

    garbage()
    # a worker keeping enough new containers to cross the young generation's threshold (freed
    # ones count back down): automatic collection would have run there, on the worker
    kept: list = []
    worker = threading.Thread(
        target=lambda: kept.extend([] for _ in range(20 * gc.get_threshold()[0]))
    )
    worker.start()
    worker.join()
    assert not destroyed_on
    qtbot.waitUntil(lambda: bool(destroyed_on), timeout=10_000)
    assert destroyed_on == [threading.main_thread()]


def collections_by(collector) -> list[int]:
    """The generations one collect() of the collector walks."""
    walked: list[int] = []

    def note(phase, info):
        if phase == "start":
            walked.append(info["generation"])

    gc.callbacks.append(note)
    try:
        collector.collect()
    finally:
        gc.callbacks.remove(note)
    return walked


def test_full_collections_wait_for_a_quarter_of_the_old_generation(qtbot):
    """As CPython's own collector: the old generation's count past its threshold is not enough,
    the objects moved there since the last full collection must also exceed a quarter of those
    it held (each full collection walks every object a 50,000-key file built)."""
    from ckpt_viewer.qt.workers import GuiThreadCollector

    owner = QObject()
    collector = GuiThreadCollector(owner)
    collector.timer.stop()
    try:
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], 1, 1)
        kept = [[] for _ in range(3 * thresholds[0])]
        for _ in range(3):  # each counts once in the old generation's count: past its threshold
            gc.collect(1)
        collector.long_lived, collector.pending = 10**9, 0
        assert 2 not in collections_by(collector)
        for _ in range(3):
            gc.collect(1)
        collector.long_lived, collector.pending = 4, 1
        assert collections_by(collector) == [2]
        assert collector.pending == 0 and collector.long_lived >= len(kept)
    finally:
        gc.set_threshold(*thresholds)
        owner.deleteLater()


def test_a_bulk_of_young_objects_is_frozen_not_walked(qtbot):
    """A bulk of young objects (an import of torch; a job paused past the limit, a
    comparison's trees) is frozen, as a load's are when its pause ends, not walked while the
    window waits."""
    from ckpt_viewer.core import paused_gc
    from ckpt_viewer.qt.workers import GuiThreadCollector

    owner = QObject()
    collector = GuiThreadCollector(owner)
    collector.timer.stop()
    frozen = gc.get_freeze_count()
    try:
        with paused_gc():
            kept = [[] for _ in range(GuiThreadCollector.BULK + 1000)]
            collector.paused_since = 1.0  # long ago
            assert collections_by(collector) == []
            assert gc.get_freeze_count() >= frozen + len(kept)
        kept += [[] for _ in range(GuiThreadCollector.BULK + 1000)]  # no pause now
        assert collections_by(collector) == []
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
        owner.deleteLater()


def test_a_middle_generation_holding_a_bulk_is_frozen_not_walked(qtbot):
    """The collector's one rule holds for the middle generation too: young collections that
    each walked few objects may together have moved a bulk there (a comparison's rows, built
    between two turns); a collection of it would walk them all, so they are frozen."""
    from ckpt_viewer.qt.workers import GuiThreadCollector

    owner = QObject()
    collector = GuiThreadCollector(owner)
    collector.timer.stop()
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        gc.set_threshold(thresholds[0], 1, thresholds[2])
        kept = [[] for _ in range(GuiThreadCollector.BULK + 1000)]
        gc.collect(0)  # the survivors move to the middle generation
        gc.collect(0)  # which is now past its threshold (1)
        kept += [[] for _ in range(thresholds[0] + 1)]
        assert collections_by(collector) == []
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        owner.deleteLater()
