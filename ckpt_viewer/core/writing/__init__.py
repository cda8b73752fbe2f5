"""The writing layer: exports and sanitizes checkpoints to new files, never touching the source."""
