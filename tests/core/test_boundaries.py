"""Architecture rules (ARCHITECTURE.md): the core never imports Qt; listing never imports torch."""

import ast
import pathlib
import subprocess
import sys

import builders

CORE = pathlib.Path(__file__).resolve().parents[2] / "ckpt_viewer" / "core"
QT_MODULES = ("PySide6", "pyqtgraph", "superqt", "qtpy", "shiboken6")


def test_core_imports_no_qt():
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(QT_MODULES), f"{path.name} imports {name}"


def test_listing_imports_no_torch(tmp_path):
    paths = [
        builders.training_checkpoint(tmp_path / "zip.pt"),
        builders.training_checkpoint(tmp_path / "legacy.pt", legacy=True),
        builders.safetensors_file(tmp_path / "w.safetensors"),
        builders.hf_directory(tmp_path / "hf"),
    ]
    code = (
        "import sys, json\n"
        "from ckpt_viewer.cli import main\n"
        f"for p in {paths!r}:\n"
        "    assert main(['inspect', p, '--json']) == 0\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'numpy')]\n"
        "print('IMPORTED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "IMPORTED []"
