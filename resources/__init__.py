"""Icons shipped with the package (found with importlib.resources)."""
