"""Cyclic garbage holding Qt objects is freed on the GUI thread, never on a worker's."""

import gc
import threading

from PySide6.QtCore import QObject


def test_cyclic_garbage_is_collected_on_the_gui_thread_only(qtbot, window):
    assert not gc.isenabled()  # the window's collector runs on the GUI thread's timer
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
