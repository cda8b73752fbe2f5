"""Can Qt's xcb platform plugin start here? Asked before anything imports Qt: when the plugin's
system libraries are missing or the X server cannot be reached, Qt prints a screenful and aborts
with a core dump; this says why in one line instead. Imports neither Qt nor numpy."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import struct
import sys

# Debian/Ubuntu packages that Qt's xcb platform plugin (libqxcb.so and libQt6XcbQpa) links or
# dlopens, as `ldd` lists them; a desktop install has most, a minimal one few.
XCB_PACKAGES = (
    "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 "
    "libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libegl1 libgl1 "
    "libfontconfig1 libdbus-1-3"
)
# dlopened by Qt >= 6.5 (not always listed as a dependency), so tried on its own
CURSOR_LIBRARY = "libxcb-cursor.so.0"


def platform_is_xcb(environ=os.environ) -> bool:
    """Will Qt pick its xcb plugin? (QT_QPA_PLATFORM may be a fallback list: 'wayland;xcb'.)"""
    if not sys.platform.startswith("linux"):
        return False
    chosen = environ.get("QT_QPA_PLATFORM", "")
    if chosen:
        return chosen.split(";")[0].split(":")[0] == "xcb"
    wayland = environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE") == "wayland"
    return bool(environ.get("DISPLAY")) and not wayland


def plugin_path(environ=os.environ) -> str:
    folder = environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    if not folder:
        spec = importlib.util.find_spec("PySide6")
        if spec is None or not spec.submodule_search_locations:
            return ""
        folder = os.path.join(spec.submodule_search_locations[0], "Qt", "plugins", "platforms")
    return os.path.join(folder, "libqxcb.so")


def needed_libraries(path: str) -> list[str]:
    """The DT_NEEDED names of a 64-bit little-endian ELF file ([] for anything else)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    if data[:6] != b"\x7fELF\x02\x01" or len(data) < 64:
        return []
    try:
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [
            struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)
        ]
        names = []
        for _, kind, _, _, offset, size, link, _ in sections:
            if kind != 6:  # SHT_DYNAMIC
                continue
            strings = sections[link][4]
            for at in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    start = strings + value
                    names.append(data[start : data.index(b"\0", start)].decode("ascii", "replace"))
        return names
    except (struct.error, IndexError, ValueError, OverflowError):
        return []


def package_name(soname: str) -> str:
    """Debian's package for a library: libxcb-icccm.so.4 -> libxcb-icccm4, libdbus-1.so.3 ->
    libdbus-1-3."""
    match = re.fullmatch(r"(.+?)\.so\.(\d+).*", soname)
    if not match:
        return soname
    base, version = match.groups()
    return (base + ("-" if base[-1].isdigit() else "") + version).lower()


def _load_error(name: str) -> str:
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return str(exc)
    return ""


def _missing_name(error: str) -> str:
    """The library a dlopen error says it could not find ('' when it failed otherwise)."""
    match = re.match(r"(?:.*/)?([^/:\s]+\.so[.\d]*): cannot open shared object file", error)
    return match.group(1) if match else ""


def missing_libraries(plugin: str) -> tuple[list[str], str]:
    """(libraries the plugin needs that cannot be loaded, the loader's own error). Loading
    plugin and all works when nothing is missing: one dlopen each, which Qt then reuses."""
    error = _load_error(plugin)
    cursor_error = _load_error(CURSOR_LIBRARY)
    if not error and not cursor_error:
        return [], ""
    missing = [CURSOR_LIBRARY] if cursor_error else []
    bundled = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(plugin))), "lib")
    seen = set()
    files = [plugin]
    while files:
        for name in needed_libraries(files.pop()):
            if name in seen:
                continue
            seen.add(name)
            if os.path.exists(os.path.join(bundled, name)):  # Qt's own, shipped by PySide6
                files.append(os.path.join(bundled, name))
                continue
            lost = _missing_name(_load_error(name))
            if lost and lost not in missing:
                missing.append(lost)
    return missing, error


def _connect_error(display: str) -> str:
    """'' when an X server answers on `display`, else why not."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError as exc:
        return str(exc)
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    failed = xcb.xcb_connection_has_error(connection)
    xcb.xcb_disconnect(connection)
    return f"cannot connect to X display {display!r}" if failed else ""


def display_problem(environ=os.environ) -> str:
    """One `error: ...` line when Qt's xcb platform would abort here, else ''."""
    if not platform_is_xcb(environ):
        return ""
    plugin = plugin_path(environ)
    if not plugin or not os.path.exists(plugin):
        return ""  # Qt explains a missing plugin itself
    prefix = "error: Qt cannot start on this display: "
    missing, error = missing_libraries(plugin)
    if missing:
        packages = " ".join(dict.fromkeys(package_name(name) for name in missing))
        return f"{prefix}missing {packages} (Debian/Ubuntu: sudo apt-get install {packages})"
    if error:
        return f"{prefix}its xcb platform plugin does not load: {error}"
    problem = _connect_error(environ.get("DISPLAY", ""))
    if problem:
        return (
            f"{prefix}{problem} (is an X server running there, and may this user use it? "
            "The inspect/stats/export/verify/diff commands work without one)"
        )
    return ""
