"""The window faced with every corpus file: a message or an inert tab; the app stays usable."""

import pytest

import builders
from corpus import CORPUS


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    sentinel = folder / "SENTINEL"
    files = {}
    for name, (builder, expect) in sorted(CORPUS.items()):
        sub = folder / name
        sub.mkdir()
        files[name] = (builder(sub, sentinel), expect)
    yield files
    assert not sentinel.exists(), "code from a file ran"


def test_every_hostile_file_in_the_gui(qtbot, tmp_path, corpus_files):
    from ckpt_viewer.qt.app import make_app
    from ckpt_viewer.qt.main_window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    good = builders.training_checkpoint(tmp_path / "good.pt")
    with qtbot.waitSignal(window.loaded, timeout=20_000):
        window.open_paths([good])
    outcomes = {}
    window.loaded.connect(lambda path: outcomes.setdefault(path, ("opens", "")))
    window.load_failed.connect(lambda path, message: outcomes.setdefault(path, ("error", message)))
    for name, (path, expect) in corpus_files.items():
        window.open_paths([path])
        qtbot.waitUntil(lambda: any(p.endswith(path.rstrip("/").split("/")[-1]) for p in outcomes),
                        timeout=20_000)
        outcome, message = next(v for p, v in outcomes.items()
                                if p.endswith(path.rstrip("/").split("/")[-1]))
        assert outcome == expect, (name, message)
        if outcome == "error":
            assert message and "\n" not in message
            dialog = window.findChild(object, "errorDialog")
            assert dialog is not None
            dialog.close()
    # the first tab is untouched and still works
    first = window.tabs.widget(0)
    assert window.tabs.tabText(0) == "good.pt"
    with qtbot.waitSignal(first.tensor_view.view_ready, timeout=20_000):
        first.select_key("model_state_dict.0.weight")
    opened = sum(1 for v in outcomes.values() if v[0] == "opens")
    assert window.tabs.count() == 1 + opened
