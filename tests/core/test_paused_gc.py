"""paused_gc: pauses that overlap on several threads (GUI jobs) bring the collector back only
when the last one ends."""

import gc

from ckpt_viewer.core import paused_gc


def test_overlapping_pauses_end_with_the_last():
    assert gc.isenabled()
    first, second = paused_gc(), paused_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first job ends while the second still builds
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_pause_inside_a_disabled_collector_leaves_it_disabled():
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
