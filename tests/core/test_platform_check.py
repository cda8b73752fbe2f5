"""Before Qt starts on X11 (the xcb platform): a missing system library or an unreachable X
server is one `error:` line and exit 2, never Qt's abort and core dump. Works on any machine:
the fake plugin's missing library is one no machine has."""

import os
import shutil
import subprocess
import sys

import pytest

from ckpt_viewer.qt import platform_check
from ckpt_viewer.qt.platform_check import (
    display_problem,
    needed_libraries,
    package_name,
    platform_is_xcb,
    plugin_path,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="xcb is Linux's")
MISSING = b"libxcq.so.1\0"  # the plugin's libxcb.so.1 with one letter changed


def fake_plugin(tmp_path) -> str:
    """A copy of Qt's xcb plugin that needs a library no machine has, beside Qt's own libraries
    (its RUNPATH is $ORIGIN/../../lib)."""
    real = plugin_path({})
    if not os.path.exists(real):
        pytest.skip("this PySide6 has no xcb plugin")
    qt = tmp_path / "Qt"
    (qt / "plugins" / "platforms").mkdir(parents=True)
    os.symlink(os.path.join(os.path.dirname(real), "..", "..", "lib"), qt / "lib")
    data = open(real, "rb").read()
    assert data.count(b"libxcb.so.1\0") == 1
    fake = qt / "plugins" / "platforms" / "libqxcb.so"
    fake.write_bytes(data.replace(b"libxcb.so.1\0", MISSING))
    return str(fake)


@linux_only
def test_needed_libraries_match_readelf():
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf here")
    plugin = plugin_path({})
    if not os.path.exists(plugin):
        pytest.skip("this PySide6 has no xcb plugin")
    listing = subprocess.run([readelf, "-d", plugin], capture_output=True, text=True).stdout
    expected = [
        line.split("[")[1].split("]")[0] for line in listing.splitlines() if "(NEEDED)" in line
    ]
    assert needed_libraries(plugin) == expected and "libxcb.so.1" in expected


def test_needed_libraries_of_anything_else_is_empty(tmp_path):
    for data in (b"", b"\x7fELF\x02\x01" + b"\xff" * 100, b"not a library" * 10):
        (tmp_path / "x.so").write_bytes(data)
        assert needed_libraries(str(tmp_path / "x.so")) == []


def test_package_names_follow_debian():
    assert package_name("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert package_name("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert package_name("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert package_name("libdbus-1.so.3") == "libdbus-1-3"
    assert package_name("libX11-xcb.so.1") == "libx11-xcb1"


def test_which_platform_is_xcb(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert platform_is_xcb({"DISPLAY": ":0"})
    assert platform_is_xcb({"QT_QPA_PLATFORM": "xcb:nograb"})
    assert not platform_is_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"})
    assert not platform_is_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "wayland;xcb"})
    assert not platform_is_xcb(
        {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    )
    assert not platform_is_xcb({})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not platform_is_xcb({"DISPLAY": ":0"})


@linux_only
def test_a_missing_library_is_named_with_its_package(tmp_path):
    plugin = fake_plugin(tmp_path)
    env = {
        "QT_QPA_PLATFORM": "xcb",
        "DISPLAY": ":0",
        "QT_QPA_PLATFORM_PLUGIN_PATH": os.path.dirname(plugin),
    }
    problem = display_problem(env)
    assert problem.startswith("error: Qt cannot start on this display: missing ")
    assert "libxcq1" in problem and "sudo apt-get install " in problem
    assert "libqt6" not in problem.lower()  # Qt's own libraries are found where Qt has them


@linux_only
def test_the_cursor_library_qt_dlopens_is_asked_for(monkeypatch):
    real_error = platform_check._load_error
    monkeypatch.setattr(
        platform_check,
        "_load_error",
        lambda name: (
            f"{name}: cannot open shared object file: No such file or directory"
            if name == platform_check.CURSOR_LIBRARY
            else real_error(name)
        ),
    )
    problem = display_problem({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":0"})
    assert "missing libxcb-cursor0" in problem


@linux_only
def test_the_app_says_why_in_one_line_and_exits_2(tmp_path, gui_env):
    plugin = fake_plugin(tmp_path)
    env = {
        **gui_env,
        "QT_QPA_PLATFORM": "xcb",
        "DISPLAY": ":0",
        "QT_QPA_PLATFORM_PLUGIN_PATH": os.path.dirname(plugin),
    }
    result = subprocess.run(
        [sys.executable, "-m", "ckpt_viewer"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Qt cannot start on this display: ")
    assert "libxcq1" in lines[0]


@linux_only
def test_an_x_server_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
    try:
        platform_check.ctypes.CDLL("libxcb.so.1")
    except OSError:
        pytest.skip("no libxcb here")
    monkeypatch.setattr(platform_check, "missing_libraries", lambda plugin: ([], ""))
    display = ":4711"  # no server: nothing listens on /tmp/.X11-unix/X4711
    assert not os.path.exists("/tmp/.X11-unix/X4711")
    problem = display_problem({"QT_QPA_PLATFORM": "xcb", "DISPLAY": display})
    assert problem.startswith(
        "error: Qt cannot start on this display: cannot connect to X display ':4711'"
    )


def test_readme_names_the_packages():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    assert f"sudo apt-get install {platform_check.XCB_PACKAGES}\n" in readme
