import os
import sys

# Qt runs without a screen in every test; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

sys.path.insert(0, os.path.dirname(__file__))   # tests/builders.py
