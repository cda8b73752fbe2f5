"""The summary panel and the status bar split elements into model parameters, optimizer state
and other: optimizer state is never counted as parameters."""

from conftest import open_and_wait


def test_summary_and_status_bar_show_the_split(qtbot, window, training_file):
    open_and_wait(qtbot, window, training_file)
    assert window.statusBar().currentMessage().endswith(
        "27 tensors, parameters: 36 model, 64 optimizer state, 0 other")
    summary = window.tabs.currentWidget().findChild(object, "summaryPanel").toPlainText()
    assert "Parameters\n36 model, 64 optimizer state, 0 other (model: 36)" in summary
    assert "Elements\n100 (100) in all tensors" in summary
